"""The contracts between the operator and the runtime, tied: each test reads both sides' own code.

The operator's image does not ship the runtime package (images/operator.Dockerfile), so the operator keeps copies
of what it must know about the runtime (exit codes, the progress line, env names, flags, routes, limits); these
tests fail when a copy and its home drift apart. docs/architecture.md ("Contracts and their homes") lists them.

The serving test runs the real thing: `orpheus-tts build-engine` with the arguments and env the operator renders for
the build Job (the tiny random-weight model, torch backend, CPU: its audio is noise), then `orpheus-tts serve` with the
env the operator renders for the Deployment, and asks the server the paths and port of the rendered probes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

# The CRD's defaulting and installation, shared with the operator's tests (tests/operator has no __init__.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "operator"))
from crd_schema import make_body
from k8s.control_plane import free_port
from operator_harness import GROUP, PLURAL, VERSION, install_crd

from orpheus_operator import buildstate, crd, engine_identity, exposure, render, scaling
from orpheus_operator.config import OperatorConfig
from orpheus_tts import cli, config
from orpheus_tts.build import build_engine, engine_store
from orpheus_tts.build.exit_codes import ExitCode

CFG = OperatorConfig(runtime_image="localhost/orpheus-tts-torch:test")
# The kernel's, not build-engine's: 128 + SIGKILL (the OOM killer).
KILLED = 137
API_KEY = "contract-test-key"
TORCH = {"backend": "torch", "weightQuantization": "none", "kvCacheDtype": "auto"}


def rendered(spec: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(body, build spec, engine hash) as the operator computes them for `spec`."""
    body = make_body(spec)
    build = engine_identity.build_spec(body["spec"], CFG)
    return body, build, engine_identity.engine_hash(build)


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    pod = obj["spec"]["template"]["spec"]
    return next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name)


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's own parser, minus argparse's prefix matching: the operator must send whole flag names."""
    parser.allow_abbrev = False
    return parser


def entry_point(command: list[str]) -> tuple[str, list[str]]:
    """The runtime module an `orpheus-tts <command> ...` line runs (cli.py's table), and its own arguments."""
    assert command[0] == "orpheus-tts", command
    assert command[1] in cli.COMMANDS, f"orpheus-tts has no command {command[1]!r}"
    return cli.COMMANDS[command[1]][0], command[2:]


# ---- exit codes and progress: the build Job's answers ----------------------------------------------------


def test_every_build_exit_code_has_a_reason_in_the_operator() -> None:
    failures = {code for code in ExitCode if code != ExitCode.OK}
    assert failures <= set(buildstate.EXIT_REASONS), sorted(failures - set(buildstate.EXIT_REASONS))
    # and the operator names no code the build commands do not have
    assert set(buildstate.EXIT_REASONS) - {KILLED} == failures


def test_the_progress_line_build_engine_prints_parses_in_the_operator(capsys: pytest.CaptureFixture[str]) -> None:
    build_engine.Reporter(None, None).phase("download", 0.35, "model.safetensors 1.2 of 3.4 GB")
    progress = buildstate.parse_progress(capsys.readouterr().err)
    assert progress == buildstate.Progress("download", 35, "model.safetensors 1.2 of 3.4 GB")


# ---- build-engine's flags ---------------------------------------------------------------------------------

ENGINES = [
    {},  # the CRD's defaults: trtllm, int4_awq, int8 KV cache
    {"engine": {"backend": "trtllm", "weightQuantization": "none", "kvCacheDtype": "auto", "maxBatchSize": 64}},
    {"engine": TORCH},
    {"engine": {**TORCH, "weightQuantization": "int8", "maxInputLen": 96, "maxOutputLen": 2048}},
    {"model": {"repo": "org/voice", "revision": "0123abc"}, "build": {"calibrationDir": "CALIB"}},
]


@pytest.mark.parametrize("spec", ENGINES)
def test_the_build_jobs_arguments_parse_with_build_engines_own_parser(spec: dict, tmp_path: pathlib.Path) -> None:
    if spec.get("build", {}).get("calibrationDir"):
        spec = {**spec, "build": {"calibrationDir": str(tmp_path)}}  # build-engine checks that it is a directory
    body, build, engine_hash = rendered(spec)
    job = container(render.render_job(body, build, engine_hash, 1), "build")
    module, argv = entry_point(job["command"] + job["args"])
    assert module == build_engine.__name__
    # build-engine's parser raises BuildError (exit 2) on an unknown flag or value; validate() on a bad combination.
    opts = build_engine.options_from_args(strict(build_engine.parser()).parse_args(argv), token=None, offline=False)
    assert (opts.backend, opts.model, opts.revision) == (build["backend"], build["repo"], build["revision"])
    assert (opts.weight_quantization, opts.kv_cache_dtype) == (build["weightQuantization"], build["kvCacheDtype"])
    assert (opts.max_batch_size, opts.max_input_len, opts.max_output_len) == (
        build["maxBatchSize"],
        build["maxInputLen"],
        build["maxOutputLen"],
    )
    assert str(opts.out) == render.engine_dir(engine_hash)  # where the Deployment's TRTLLM_ENGINE_DIR points
    assert opts.calib_dir == (pathlib.Path(build["calibrationDir"]) if build["calibrationDir"] else None)
    assert opts.wait and opts.status_file is not None


def test_the_engine_store_commands_parse_with_their_own_parsers() -> None:
    body, build, engine_hash = rendered({"storage": {"accessMode": "ReadWriteOnce"}})
    store = container(render.render_store(body, CFG), "store")
    module, argv = entry_point(store["command"])
    assert module == engine_store.__name__
    args = strict(engine_store.serve_engines_parser()).parse_args(argv)
    assert (str(args.dir), args.port) == (crd.ENGINES_MOUNT, store["ports"][0]["containerPort"])
    fetch = container(render.render_deployment(body, CFG, build, engine_hash), "fetch-engine")
    module, argv = entry_point(fetch["command"])
    assert module == engine_store.__name__
    args = strict(engine_store.fetch_engine_parser()).parse_args(argv)
    assert (args.url, str(args.out)) == (render.store_url(body, engine_hash), render.engine_dir(engine_hash))


def test_the_crd_admits_exactly_the_builds_build_engine_accepts(kube: Any, namespace: str) -> None:
    """The CRD's rule on backend x quantization x KV cache (a CEL rule, run by the real API server) and
    build-engine's validate() agree on every combination of the CRD's enums."""
    with kube.api_client() as api:
        install_crd(api)
        objects = client.CustomObjectsApi(api)
        for i, (backend, weights, kv) in enumerate(
            itertools.product(["trtllm", "torch"], ["int4_awq", "int8", "none"], ["int8", "auto"])
        ):
            spec = {"engine": {"backend": backend, "weightQuantization": weights, "kvCacheDtype": kv}}
            obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": crd.KIND, "metadata": {"name": f"e{i}"}, "spec": spec}
            try:
                objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj, dry_run="All")
                admitted = True
            except ApiException as e:
                assert e.status == 422, e
                admitted = False
            body, build, engine_hash = rendered(spec)
            job = container(render.render_job(body, build, engine_hash, 1), "build")
            try:
                build_engine.options_from_args(strict(build_engine.parser()).parse_args(job["args"][1:]), None, False)
                accepted = True
            except build_engine.BuildError as e:
                assert e.exit_code == ExitCode.USAGE
                accepted = False
            assert admitted == accepted, (spec, admitted, accepted)


# ---- env names ----------------------------------------------------------------------------------------------

SECRETS = {
    "model": {"hfTokenSecretRef": {"name": "hf"}},
    "runtime": {"apiKeySecretRef": {"name": "api", "key": "key"}},
}


def test_every_env_name_the_operator_renders_is_one_the_runtime_reads() -> None:
    for spec in ({}, SECRETS, {**SECRETS, "storage": {"accessMode": "ReadWriteOnce"}}):
        body, build, engine_hash = rendered(spec)
        job = render.render_job(body, build, engine_hash, 1)
        dep = render.render_deployment(body, CFG, build, engine_hash)
        pods = [job["spec"]["template"]["spec"], dep["spec"]["template"]["spec"]]
        containers = [c for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]
        names = {e["name"] for c in containers for e in c.get("env", [])}
        unknown = names - set(config.ENV_VARS) - set(config.LIBRARY_ENV)
        assert not unknown, f"the operator renders env the runtime never reads: {sorted(unknown)}"
    assert {"HF_TOKEN", "ORPHEUS_API_KEY"} <= names  # the secrets reach the pods by these names


def test_the_rendered_env_configures_the_runtime_as_the_operator_means() -> None:
    spec = {"runtime": {"drainGraceSeconds": 45, "playground": False}, "snac": {"maxBatch": 32, "batchTimeoutMs": 3}}
    body, build, engine_hash = rendered({**spec, "engine": {"kvFreeGpuFraction": 0.5}})
    tts = container(render.render_deployment(body, CFG, build, engine_hash), "tts")
    cfg = config.from_env({e["name"]: e["value"] for e in tts["env"] if "value" in e})
    assert (cfg.backend, cfg.engine_dir) == (build["backend"], render.engine_dir(engine_hash))
    assert (cfg.max_batch_size, cfg.max_input_len, cfg.max_output_len) == (
        build["maxBatchSize"],
        build["maxInputLen"],
        build["maxOutputLen"],
    )
    assert (cfg.kv_free_gpu_frac, cfg.snac_max_batch, cfg.snac_batch_timeout_ms) == (0.5, 32, 3.0)
    assert (cfg.drain_grace_s, cfg.playground, cfg.hf_offline) == (45.0, False, True)
    assert cfg.port == tts["ports"][0]["containerPort"] == crd.HTTP_PORT


# ---- limits the operator derives timeouts and scaling from ----------------------------------------------


def test_the_operators_copies_of_the_runtime_limits_match_the_runtime() -> None:
    """The operator cannot import the runtime (separate images): its copies of the limits are tied here."""
    from orpheus_tts import audio
    from orpheus_tts.config import RuntimeConfig
    from orpheus_tts.model.model_spec import VOICES
    from orpheus_tts.speech import prompts

    assert exposure.SAMPLE_RATE == audio.SAMPLE_RATE
    assert exposure.SAMPLES_PER_FRAME == audio.SAMPLES_PER_FRAME
    assert exposure.TOKENS_PER_FRAME == audio.CODES_PER_FRAME
    assert exposure.PROMPT_OVERHEAD == prompts.PROMPT_OVERHEAD
    assert exposure.MAX_TEXT_CHARS == RuntimeConfig().max_text_chars
    # "name: " of the longest voice fits VOICE_PREFIX_TOKENS (a Llama 3 token holds a short word or more).
    assert max(len(v) for v in VOICES) + 2 <= 4 * exposure.VOICE_PREFIX_TOKENS
    assert scaling.PRESTOP_SLEEP_SECONDS == render.PRESTOP_SLEEP_SECONDS
    assert scaling.SHUTDOWN_MARGIN_SECONDS == render.SHUTDOWN_MARGIN_SECONDS


# ---- probes and ports: routes the servers serve ---------------------------------------------------------


def on_disk(value: str, root: pathlib.Path) -> str:
    """A path under the pod's engines mount, here under `root`."""
    return str(root) + value[len(crd.ENGINES_MOUNT) :] if value.startswith(crd.ENGINES_MOUNT) else value


def pod_env(c: dict[str, Any], root: pathlib.Path, **overrides: str) -> dict[str, str]:
    """This process's env without the runtime's own names, then the container's env as the kubelet sets it
    (secret references resolved to API_KEY), then `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in config.ENV_VARS}
    for item in c.get("env", []):
        env[item["name"]] = on_disk(item["value"], root) if "value" in item else API_KEY
    return {**env, **overrides}


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_until_ok(url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if get(url) == 200:
                return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"{url} never answered 200: {log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture
def run(tmp_path: pathlib.Path) -> Iterator[Any]:
    """Starts a rendered `orpheus-tts ...` command line as a process (stopped after the test)."""
    procs: list[subprocess.Popen] = []

    def start(command: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
        _, argv = entry_point(command)
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", cli.__name__, command[1], *argv], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def probe_paths(c: dict[str, Any]) -> dict[str, str]:
    """Probe kind -> path, asserting each probe asks the container's own named port."""
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in c:
            assert c[kind]["httpGet"]["port"] in ports, (kind, c[kind])
            paths[kind] = c[kind]["httpGet"]["path"]
    return paths


def test_the_rendered_build_and_server_pods_run_and_answer_their_probes(tmp_path: pathlib.Path, run: Any) -> None:
    """Build Job -> engine on the volume -> server: with the operator's own rendering at every step."""
    spec = {
        "model": {"repo": build_engine.TINY_RANDOM},
        "engine": {**TORCH, "maxBatchSize": 2, "maxOutputLen": 28},
        "runtime": SECRETS["runtime"],
    }
    body, build, engine_hash = rendered(spec)
    engines = tmp_path / "engines"
    engines.mkdir()

    job = container(render.render_job(body, build, engine_hash, 1), "build")
    build_log = tmp_path / "build.log"
    proc = run(job["command"] + [on_disk(a, engines) for a in job["args"]], pod_env(job, engines), build_log)
    assert proc.wait(timeout=300) == ExitCode.OK, build_log.read_text()[-3000:]

    dep = render.render_deployment(body, CFG, build, engine_hash)
    tts = container(dep, "tts")
    port = free_port()
    env = pod_env(tts, engines, HOST="127.0.0.1", PORT=str(port))  # loopback, and a free port on this machine
    assert env["TRTLLM_ENGINE_DIR"] == str(engines / engine_hash)  # the directory the build Job wrote
    server_log = tmp_path / "server.log"
    server = run(tts["command"], env, server_log)
    base = f"http://127.0.0.1:{port}"
    paths = probe_paths(tts)
    assert set(paths) == {"startupProbe", "readinessProbe", "livenessProbe"}
    wait_until_ok(base + paths["startupProbe"], server, server_log)
    # The kubelet sends no API key: the probes answer without one although the server requires it.
    wait_until_ok(base + paths["readinessProbe"], server, server_log, timeout=60)
    assert get(base + paths["livenessProbe"]) == 200
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(crd.HTTP_PORT) == env_value(tts, "PORT")
    assert get(base + annotations["prometheus.io/path"]) == 200
    assert get(base + "/no-such-route") == 404  # the checks above can fail


def env_value(c: dict[str, Any], name: str) -> str:
    return next(e["value"] for e in c["env"] if e["name"] == name)


def test_the_rendered_engine_store_answers_its_probe(tmp_path: pathlib.Path, run: Any) -> None:
    body, _, _ = rendered({"storage": {"accessMode": "ReadWriteOnce"}})
    store = container(render.render_store(body, CFG), "store")
    (path,) = probe_paths(store).values()
    port = free_port()
    command = [on_disk(a, tmp_path) for a in store["command"]]
    command[command.index("--port") + 1] = str(port)
    log = tmp_path / "store.log"
    proc = run([*command, "--host", "127.0.0.1"], pod_env(store, tmp_path), log)
    wait_until_ok(f"http://127.0.0.1:{port}{path}", proc, log, timeout=60)
    assert get(f"http://127.0.0.1:{port}/no-such-engine/manifest.json") == 404
