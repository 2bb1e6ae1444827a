"""`orpheus-tts build-engine` on CPU: torch backend end to end, trtllm through the test double.

Builds go into a temporary "PVC" directory, the way the operator's Job lays it out:
/engines/<hash>, /engines/<hash>.status.json, /engines/<hash>.lock.
"""

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from trtllm_double.install import installed

from orpheus_tts.build import build_engine as be
from orpheus_tts.build import manifest as mf
from orpheus_tts.build.exit_codes import ExitCode

FAKE_TOKEN = "hf_FAKEtokenNEVERprintMEabc123"


@pytest.fixture
def trtllm(monkeypatch):
    with installed(monkeypatch) as api:
        yield api


def _weights(sharded: bool) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    layer = {
        "model.layers.0.self_attn.q_proj.weight": t(16, 16),
        "model.layers.0.mlp.down_proj.weight": t(16, 24),
        "model.layers.0.input_layernorm.weight": t(16),
    }
    rest = {"model.embed_tokens.weight": t(40, 16), "model.norm.weight": t(16)}
    if sharded:
        return {"model-00001-of-00002.safetensors": layer, "model-00002-of-00002.safetensors": rest}
    return {"model.safetensors": {**layer, **rest}}


def make_model_dir(root: pathlib.Path, sharded: bool = False) -> pathlib.Path:
    """An HF-layout model dir (as build-engine sees one: it copies, it does not run the model)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (root / "tokenizer.json").write_text('{"model": {}}')
    (root / "tokenizer_config.json").write_text("{}")
    (root / "optimizer.pt").write_bytes(b"o" * 1000)  # must never be copied
    shards = _weights(sharded)
    for name, tensors in shards.items():
        save_file(tensors, root / name)
    if sharded:
        weight_map = {k: name for name, tensors in shards.items() for k in tensors}
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "snac").mkdir()
    (root / "snac" / "config.json").write_text('{"sampling_rate": 24000}')
    (root / "snac" / "pytorch_model.bin").write_bytes(b"s" * 100)
    return root


@pytest.fixture
def model_dir(tmp_path):
    return make_model_dir(tmp_path / "src-model")


@pytest.fixture
def pvc(tmp_path):
    d = tmp_path / "engines"
    d.mkdir()
    return d


def _args(model, out, *extra) -> list[str]:
    return [
        "--backend",
        "torch",
        "--model",
        str(model),
        "--out",
        str(out),
        "--status-file",
        str(out) + ".status.json",
        *extra,
    ]


def _status(out) -> dict:
    return json.loads(pathlib.Path(str(out) + ".status.json").read_text())


def _snapshot(d: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def test_full_torch_build(model_dir, pvc, capsys):
    out = pvc / "abc123"
    assert be.main(_args(model_dir, out), environ={}) == 0
    m = mf.load_for_serving(out)
    assert m.backend == "torch" and m.gpu_agnostic and m.gpu_arch is None
    assert m.model_repo == str(model_dir) and m.resolved_commit is None
    assert (m.weight_quantization, m.kv_cache_dtype) == ("none", "auto")
    assert (m.max_batch_size, m.max_input_len, m.max_output_len) == (20, 48, 1024)
    assert "orpheus-tts" in m.tools and "torch" in m.tools
    files = {f.path for f in m.files}
    assert {
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "snac/config.json",
        "snac/pytorch_model.bin",
    } <= files
    assert not any("optimizer" in f for f in files)
    assert (out / "manifest.json").exists()
    assert _status(out) == {"phase": "done", "progress": 1.0, "message": m_message(out), "exit_code": 0}
    assert sorted(p.name for p in pvc.iterdir()) == ["abc123", "abc123.lock", "abc123.status.json"]
    err = capsys.readouterr().err.strip().splitlines()
    assert "[downloading" in err[0] and err[-1] == m_message(out)
    # the source is copied, not linked: editing it later cannot change the engine
    assert (out / "model" / "config.json").stat().st_ino != (model_dir / "config.json").stat().st_ino


def m_message(out) -> str:
    return _status(out)["message"]


def test_second_identical_build_is_a_noop(model_dir, pvc):
    out = pvc / "e"
    assert be.main(_args(model_dir, out), environ={}) == 0
    before = _snapshot(out)
    assert be.main(_args(model_dir, out), environ={}) == 0
    assert _snapshot(out) == before
    assert "already built" in _status(out)["message"] and _status(out)["exit_code"] == 0


def test_changed_parameter_builds_anew(model_dir, pvc):
    assert be.main(_args(model_dir, pvc / "a"), environ={}) == 0
    before = _snapshot(pvc / "a")
    # the operator hashes the spec into a new target...
    assert be.main(_args(model_dir, pvc / "b", "--max-batch-size", "32"), environ={}) == 0
    assert mf.load_for_serving(pvc / "b").max_batch_size == 32
    assert _snapshot(pvc / "a") == before
    # ...and the same target with other settings is rebuilt, not reused
    assert be.main(_args(model_dir, pvc / "a", "--max-output-len", "512"), environ={}) == 0
    assert mf.load_for_serving(pvc / "a").max_output_len == 512
    assert not list(pvc.glob(".a.*"))


def test_damaged_build_is_rebuilt(model_dir, pvc):
    out = pvc / "e"
    assert be.main(_args(model_dir, out), environ={}) == 0
    (out / "model" / "model.safetensors").write_bytes(b"truncated")
    assert be.main(_args(model_dir, out), environ={}) == 0
    assert "built torch engine" in _status(out)["message"]
    mf.load_for_serving(out, verify_hashes=True)


@pytest.mark.parametrize("sharded", [False, True])
def test_int8_weight_only_format(tmp_path, pvc, sharded):
    src = make_model_dir(tmp_path / "m", sharded=sharded)
    src_before = _snapshot(src)
    out = pvc / "q"
    assert be.main(_args(src, out, "--weight-quantization", "int8"), environ={}) == 0
    assert mf.load_for_serving(out).weight_quantization == "int8"
    original = {k: v for shard in _weights(sharded).values() for k, v in shard.items()}
    built = {}
    for shard in (out / "model").glob("*.safetensors"):
        built.update(load_file(shard))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        assert f"{name}.weight" not in built
        q, s = built[f"{name}.qweight"], built[f"{name}.scales"]
        w = original[f"{name}.weight"].float()
        assert q.dtype == torch.int8 and s.dtype == torch.bfloat16
        assert q.shape == w.shape and s.shape == (w.shape[0],)
        assert q.abs().max() <= 127
        err = (q.float() * s.float()[:, None] - w).abs().max(dim=1).values
        assert torch.all(err <= s.float() * 0.5 + 1e-6)  # at most half a quantization step per row
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(built[name], original[name])
    if sharded:
        wm = json.loads((out / "model" / "model.safetensors.index.json").read_text())["weight_map"]
        assert set(wm) == set(built)
        assert wm["model.layers.0.self_attn.q_proj.qweight"] == "model-00001-of-00002.safetensors"
    assert _snapshot(src) == src_before  # the source model was not modified


def test_tiny_random_build(pvc):
    out = pvc / "tiny"
    assert be.main(_args("tiny-random", out, "--weight-quantization", "int8"), environ={}) == 0
    m = mf.load_for_serving(out)
    assert m.model_repo == "tiny-random" and m.snac_model == "tiny-random" and m.weight_quantization == "int8"
    files = {f.path for f in m.files}
    assert {
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/orpheus.json",
        "snac/config.json",
        "snac/pytorch_model.bin",
    } <= files
    assert not any(f.startswith("tiny-src") for f in files)
    from orpheus_tts.model.model_spec import load_model_spec

    assert load_model_spec(out / "model").end_of_speech == 128258  # the model dir is still a valid model
    tensors = load_file(out / "model" / "model.safetensors")
    assert any(k.endswith("q_proj.qweight") for k in tensors) and not any(k.endswith("q_proj.weight") for k in tensors)


async def test_tiny_random_build_is_servable_by_the_loader(pvc):
    """End to end: what build-engine writes is what loader.py + the torch engine serve."""
    from orpheus_tts.config import RuntimeConfig
    from orpheus_tts.engine.interface import GenerationRequest, SamplingParams
    from orpheus_tts.serve.loader import load_engine

    out = pvc / "servable"
    assert be.main(_args("tiny-random", out), environ={}) == 0
    cfg = RuntimeConfig(engine_dir=str(out), device="cpu", max_batch_size=2, max_output_len=14, cuda_graphs=False)
    loaded = load_engine(cfg)
    assert loaded.snac_source == str(out / "snac")
    await loaded.engine.start()
    try:
        ids = [
            i
            async for chunk in loaded.engine.submit(
                GenerationRequest(
                    "r",
                    [128259, 128000, 5, 128009, 128260, 128261, 128257],
                    SamplingParams(max_tokens=14, min_tokens=14, seed=1),
                )
            )
            for i in chunk
        ]
    finally:
        await loaded.engine.close()
    assert len(ids) == 14


def test_build_from_the_tiny_model_dir(tiny_model_dir, pvc):
    out = pvc / "local-tiny"
    assert be.main(_args(tiny_model_dir, out), environ={}) == 0
    m = mf.load_for_serving(out)
    assert m.model_repo == str(tiny_model_dir)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (out / "model" / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    snac = "snac/pytorch_model.bin"
    assert (out / snac).read_bytes() == (tiny_model_dir / snac).read_bytes()


def put_in_hub_cache(cache: pathlib.Path, repo: str, src: pathlib.Path, commit: str) -> pathlib.Path:
    """Lay src's top-level files out as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        if f.is_file():
            blob = root / "blobs" / f"blob-{f.name}"
            blob.write_bytes(f.read_bytes())
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return root / "blobs"


def test_build_from_the_hub_cache_links_blobs_and_records_the_commit(model_dir, pvc):
    commit, snac_commit = "a" * 40, "b" * 40
    blobs = put_in_hub_cache(pvc / ".hf-cache", "canopylabs/orpheus-3b-0.1-ft", model_dir, commit)
    put_in_hub_cache(pvc / ".hf-cache", "hubertsiuzdak/snac_24khz", model_dir / "snac", snac_commit)
    blob_bytes = (blobs / "blob-model.safetensors").read_bytes()
    env = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN}
    out = pvc / "cached"
    argv = _args("canopylabs/orpheus-3b-0.1-ft", out, "--revision", "main")
    assert be.main(argv, environ=env) == 0
    m = mf.load_for_serving(out)
    assert (m.model_repo, m.requested_revision, m.resolved_commit) == ("canopylabs/orpheus-3b-0.1-ft", "main", commit)
    assert m.snac_model == "hubertsiuzdak/snac_24khz"
    assert (out / "model" / "model.safetensors").stat().st_ino == (blobs / "blob-model.safetensors").stat().st_ino
    assert not (out / "model" / "optimizer.pt").exists()  # not in the allow-list, even when cached
    assert FAKE_TOKEN not in (out / "manifest.json").read_text()
    # int8 rewrites the weights without writing through the hard link into the cache
    out8 = pvc / "cached-int8"
    assert be.main([*_args("canopylabs/orpheus-3b-0.1-ft", out8, "--weight-quantization", "int8")], environ=env) == 0
    assert (blobs / "blob-model.safetensors").read_bytes() == blob_bytes
    assert "model.layers.0.self_attn.q_proj.qweight" in load_file(out8 / "model" / "model.safetensors")


KILLABLE = """
import pathlib, sys, time
from orpheus_tts.build import build_engine
real = build_engine.fetch_snac
def slow(*args, **kwargs):
    real(*args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("in the copy phase")
    time.sleep(600)
build_engine.fetch_snac = slow
sys.exit(build_engine.main(sys.argv[2:]))
"""


def test_build_killed_midway_leaves_nothing_servable(model_dir, pvc, tmp_path):
    out, signal_file = pvc / "killed", tmp_path / "reached"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(signal_file), *_args(model_dir, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not signal_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "build never reached the copy phase"
            time.sleep(0.05)
        assert _status(out)["phase"] == "downloading"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert not out.exists()
    partial = list(pvc.glob(".killed.partial-*"))
    assert len(partial) == 1 and (partial[0] / "snac" / "config.json").exists()
    with pytest.raises(mf.ManifestError):
        mf.load_for_serving(out)
    with pytest.raises(mf.ManifestError, match="build did not finish"):
        mf.load_for_serving(partial[0])
    # the kernel dropped the dead build's lock; the rerun cleans up and completes
    assert be.main(_args(model_dir, out), environ={}) == 0
    mf.load_for_serving(out)
    assert not list(pvc.glob(".killed.*"))


def test_lock_refuses_a_concurrent_build(model_dir, pvc):
    out = pvc / "locked"
    with open(str(out) + ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert be.main(_args(model_dir, out), environ={}) == ExitCode.LOCKED
        assert _status(out)["exit_code"] == 8 and "another build" in _status(out)["message"]
        assert not out.exists()


def test_wait_waits_for_the_lock(model_dir, pvc):
    out = pvc / "waited"
    holder = open(str(out) + ".lock", "w")  # released by the timer thread
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.5, holder.close).start()
    t0 = time.monotonic()
    assert be.main(_args(model_dir, out, "--wait"), environ={}) == 0
    assert time.monotonic() - t0 >= 0.4
    mf.load_for_serving(out)


def test_never_replaces_a_directory_that_is_not_an_engine(model_dir, pvc):
    out = pvc / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert be.main(_args(model_dir, out), environ={}) == ExitCode.USAGE
    assert (out / "thesis.tex").read_text() == "years of work"
    assert "not an engine directory" in _status(out)["message"]


def test_disk_full_is_exit_5_and_cleans_up(model_dir, pvc, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(be, "build_torch", full)
    out = pvc / "full"
    assert be.main(_args(model_dir, out), environ={}) == ExitCode.DISK_FULL
    assert _status(out)["phase"] == "failed" and "disk full" in _status(out)["message"]
    assert sorted(p.name for p in pvc.iterdir()) == ["full.lock", "full.status.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weight-quantization", "int4_awq"], "needs --backend trtllm"),
        (["--kv-cache-dtype", "int8"], "needs --backend trtllm"),
        (["--max-batch-size", "0"], "must be positive"),
    ],
)
def test_usage_errors_exit_2(model_dir, pvc, argv, message):
    out = pvc / "u"
    assert be.main(_args(model_dir, out, *argv), environ={}) == ExitCode.USAGE
    assert message in _status(out)["message"]


def test_argument_errors_exit_2_and_reach_the_status_file(pvc, capsys):
    status = pvc / "s.status.json"
    assert be.main(["--out", str(pvc / "s"), "--status-file", str(status)], environ={}) == ExitCode.USAGE
    message = json.loads(status.read_text())["message"]
    assert "--model" in message and capsys.readouterr().err.strip().splitlines()[-1] == message
    assert be.main(["--model", "m", "--out", "o", "--backend", "vllm"], environ={}) == ExitCode.USAGE


def test_bad_environment_exits_2(model_dir, pvc):
    out = pvc / "env"
    assert be.main(_args(model_dir, out), environ={"TRTLLM_MAX_BATCH_SIZE": "many"}) == ExitCode.USAGE
    assert "invalid environment" in _status(out)["message"]


def test_missing_model_files_fail_readably(tmp_path, pvc):
    empty = tmp_path / "empty"
    (empty / "snac").mkdir(parents=True)
    (empty / "snac" / "config.json").write_text("{}")
    (empty / "snac" / "pytorch_model.bin").write_text("x")
    assert be.main(_args(empty, pvc / "x"), environ={}) == ExitCode.FAILED
    assert "none of the expected model files" in _status(pvc / "x")["message"]


# ---- hub errors and the token --------------------------------------------------------------------


def _http_error(cls, status: int, message: str):
    import httpx

    request = httpx.Request("GET", "https://huggingface.co/api/models/canopylabs/orpheus-3b-0.1-ft")
    return cls(message, response=httpx.Response(status, request=request))


def _hub_exceptions():
    from huggingface_hub import errors as e

    return {
        "gated": (_http_error(e.GatedRepoError, 401, f"gated (sent {FAKE_TOKEN})"), 3, "is gated"),
        "refused": (_http_error(e.HfHubHTTPError, 403, f"forbidden {FAKE_TOKEN}"), 3, "refused access"),
        "missing": (_http_error(e.RepositoryNotFoundError, 404, "nope"), 4, "not found"),
        "revision": (_http_error(e.RevisionNotFoundError, 404, "nope"), 4, "revision 'v9' not found"),
        "network": (ConnectionError(f"reset while sending {FAKE_TOKEN}"), 9, "network error"),
        "disk": (OSError(28, "No space left on device"), 5, "no space left"),
        "other": (ValueError(f"weird {FAKE_TOKEN}"), 1, "failed"),
    }


@pytest.mark.parametrize("case", ["gated", "refused", "missing", "revision", "network", "disk", "other"])
@pytest.mark.parametrize("token", [None, FAKE_TOKEN])
def test_hub_errors_map_to_exit_codes_without_leaking_the_token(pvc, capsys, monkeypatch, case, token):
    """The real hub.py classification, with huggingface_hub's download replaced by one that fails;
    several failures carry the token in their text, as careless library messages might."""
    import huggingface_hub

    exc, code, words = _hub_exceptions()[case]

    def snapshot_download(*args, **kwargs):
        assert kwargs["token"] == token
        assert "model*.safetensors" in kwargs["allow_patterns"] and "*.pt" not in kwargs["allow_patterns"]
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = pvc / "h"
    argv = [
        "--model",
        "canopylabs/orpheus-3b-0.1-ft",
        "--revision",
        "v9",
        "--out",
        str(out),
        "--status-file",
        str(out) + ".status.json",
    ]
    assert be.main(argv, environ={"HF_TOKEN": token} if token else {}) == code
    captured = capsys.readouterr()
    status_text = pathlib.Path(str(out) + ".status.json").read_text()
    message = json.loads(status_text)["message"]
    assert words in message and "\n" not in message
    assert captured.err.strip().splitlines()[-1] == message
    if case in ("gated", "refused") and token is None:
        assert "no HF_TOKEN is set" in message
    if token:  # (without HF_TOKEN there is no secret: the fake string is just text in a message)
        for text in (captured.out, captured.err, status_text):
            assert FAKE_TOKEN not in text
    assert not out.exists()


def test_unwritable_status_file_does_not_break_the_build(model_dir, pvc, tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = pvc / "e"
    argv = ["--model", str(model_dir), "--out", str(out), "--status-file", str(blocker / "s.json")]
    assert be.main(argv, environ={}) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("cannot write status file" in line for line in err) and err[-1].startswith("built torch engine")


def test_reporter_scrubs_the_token_from_any_message(tmp_path, capsys):
    status = tmp_path / "s.json"
    be.Reporter(status, FAKE_TOKEN).finish(1, f"library said: bad token {FAKE_TOKEN}\nsecond line")
    assert FAKE_TOKEN not in status.read_text() + capsys.readouterr().err
    assert json.loads(status.read_text())["message"] == "library said: bad token *** second line"


def test_token_never_leaks_from_a_real_failed_download(pvc, tmp_path):
    """Subprocess, real hub code path, offline: the failure is classified and the token is nowhere."""
    out = pvc / "real"
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orpheus_tts.cli",
            "build-engine",
            "--model",
            "canopylabs/orpheus-3b-0.1-ft",
            "--out",
            str(out),
            "--status-file",
            str(out) + ".status.json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == ExitCode.NOT_FOUND, proc.stderr  # offline and not cached: classified, no crash
    status = pathlib.Path(str(out) + ".status.json").read_text()
    for text in (proc.stdout, proc.stderr, status):
        assert FAKE_TOKEN not in text
    assert proc.stderr.strip().splitlines()[-1] == json.loads(status)["message"]
    assert "Traceback" not in proc.stderr


# ---- trtllm backend: preconditions, and the build through the double ----------------------------


def _trt_args(model, out, *extra) -> list[str]:
    return ["--backend", "trtllm", *_args(model, out, *extra)[2:]]


def test_trtllm_without_tensorrt_llm_is_exit_10(model_dir, pvc, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt_llm" else real(n, *a))
    out = pvc / "t"
    assert be.main(_trt_args(model_dir, out), environ={}) == ExitCode.NO_TRTLLM
    assert "TensorRT-LLM is not installed" in _status(out)["message"]


def test_trtllm_without_gpu_is_exit_6(trtllm, model_dir, pvc, monkeypatch):
    monkeypatch.setattr(mf, "probe_gpu", lambda: (None, None))
    out = pvc / "t"
    assert be.main(_trt_args(model_dir, out), environ={}) == ExitCode.NO_GPU
    assert "needs a GPU" in _status(out)["message"]


def test_trtllm_on_pre_ampere_gpu_is_exit_7(trtllm, model_dir, pvc, monkeypatch):
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("Tesla T4", "sm_75"))
    out = pvc / "t"
    assert be.main(_trt_args(model_dir, out), environ={}) == ExitCode.GPU_UNSUPPORTED
    message = _status(out)["message"]
    assert "Tesla T4 (sm_75)" in message and "sm_80" in message
    assert not trtllm.LLM.instances  # refused before any work


def _calib_dir(root: pathlib.Path, rows: int = 3) -> pathlib.Path:
    """A user's calibration set in our layout: train.jsonl, one {"text": ...} per line."""
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(rows)))
    return root


def test_trtllm_build_through_the_double(trtllm, model_dir, pvc, monkeypatch, tmp_path):
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100 80GB HBM3", "sm_90"))
    calib = _calib_dir(tmp_path / "calib")
    out = pvc / "trt"
    argv = _trt_args(model_dir, out, "--max-batch-size", "16", "--max-output-len", "1024", "--calib-dir", str(calib))
    assert be.main(argv, environ={}) == 0
    [llm] = trtllm.LLM.instances
    q = llm.kwargs["quant_config"]
    assert q.quant_algo == trtllm.QuantAlgo.W4A16_AWQ and q.kv_cache_quant_algo == trtllm.QuantAlgo.INT8
    assert q.group_size == 128  # the library default, which is the AWQ block size we want
    c = llm.kwargs["calib_config"]
    assert llm.calibration_rows == ["row 0", "row 1", "row 2"]  # read the way the library reads it
    assert (c.calib_batches, c.calib_max_seq_length) == (3, 48 + 1024)  # every row, whole sequences
    assert not pathlib.Path(c.calib_dataset).exists()  # the staged copy went with the temporary dir
    b = llm.kwargs["build_config"]
    assert (b.max_batch_size, b.max_input_len, b.max_seq_len) == (16, 48, 48 + 1024)
    assert b.plugin_config.gemm_plugin == "auto"  # the bf16 output layer through cuBLASLt, as the seed built
    assert llm.kwargs["model"] == str(model_dir) and llm.shut_down
    # the library's workspace was on the engines volume, inside the temporary build dir, and is gone
    assert pathlib.Path(llm.kwargs["workspace"]).parent.name.startswith(".trt.partial-")
    assert not (out / "workspace").exists()
    m = mf.load_for_serving(
        out, env=mf.Environment("NVIDIA H100 80GB HBM3", "sm_90", {"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1.48"})
    )
    assert (m.backend, m.gpu_agnostic, m.gpu_arch) == ("trtllm", False, "sm_90")
    assert (m.calib_dir, m.gemm_plugin) == (str(calib), "auto")
    assert m.tools["tensorrt_llm"] == "1.2.1" and m.tools["tensorrt"] == "10.14.1.48"
    assert (out / "engine" / "rank0.engine").exists() and (out / "model" / "tokenizer.json").exists()
    assert not list((out / "model").glob("*.safetensors"))  # weights live in the engine
    # the same engine on another GPU or TensorRT-LLM is refused at serving time, readably
    with pytest.raises(mf.ManifestError, match=r"sm_90 .* but this GPU is sm_80"):
        mf.load_for_serving(out, env=mf.Environment("NVIDIA A100", "sm_80", m.tools))
    with pytest.raises(mf.ManifestError, match=r"tensorrt_llm 1\.3\.0 is installed"):
        mf.load_for_serving(out, env=mf.Environment("H100", "sm_90", dict(m.tools, tensorrt_llm="1.3.0")))
    # and an identical rebuild on the same GPU/version is a no-op
    assert be.main(argv, environ={}) == 0 and len(trtllm.LLM.instances) == 1


def test_trtllm_failure_cleans_up(trtllm, model_dir, pvc, monkeypatch, tmp_path):
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA A100-SXM4-80GB", "sm_80"))
    trtllm.LLM.fail_on_init = RuntimeError("CUDA out of memory during calibration")
    out = pvc / "oom"
    argv = _trt_args(model_dir, out, "--calib-dir", str(_calib_dir(tmp_path / "c")))
    assert be.main(argv, environ={}) == ExitCode.FAILED
    assert "CUDA out of memory" in _status(out)["message"]
    assert not out.exists() and not list(pvc.glob(".oom.*"))
    trtllm.LLM.fail_on_init = None
    argv = _trt_args(model_dir, out, "--weight-quantization", "none", "--kv-cache-dtype", "auto", "--gemm-plugin",
                     "disable")  # fmt: skip
    assert be.main(argv, environ={}) == 0
    [llm] = trtllm.LLM.instances
    assert llm.kwargs["quant_config"].quant_algo is None and llm.kwargs["quant_config"].kv_cache_quant_algo is None
    assert llm.calibration_rows is None and llm.kwargs["build_config"].plugin_config.gemm_plugin is None
    m = mf.read(out)
    assert m.calib_dir is None and m.gemm_plugin == "disable"


@pytest.mark.parametrize("weights", ["int8", "none"])
def test_trtllm_int8_kv_without_awq_reads_a_local_calibration_dir(trtllm, model_dir, pvc, monkeypatch, tmp_path,
                                                                   weights):  # fmt: skip
    """The library's native INT8-KV path loads a local dataset without a split (`KeyError: None`) unless
    its path names a dataset it knows: the build stages the rows in a layout both paths read."""
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100 80GB HBM3", "sm_90"))
    calib = _calib_dir(tmp_path / "my-calib", rows=5)
    out = pvc / f"kv-{weights}"
    argv = _trt_args(model_dir, out, "--weight-quantization", weights, "--calib-dir", str(calib))
    assert be.main(argv, environ={}) == 0, _status(out)["message"]
    [llm] = trtllm.LLM.instances
    assert llm.kwargs["quant_config"].kv_cache_quant_algo == trtllm.QuantAlgo.INT8
    assert llm.calibration_rows == [f"row {i}" for i in range(5)]


def test_trtllm_calibrates_on_a_generated_set_by_default(trtllm, pvc, monkeypatch):
    """No --calib-dir: the build generates Orpheus prompts + audio codes with the torch engine, keeps them
    on the engines volume, and a later build reuses them; nothing is downloaded (tiny model: the codes
    are noise)."""
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100 80GB HBM3", "sm_90"))
    small = ["--max-output-len", "21", "--calib-rows", "3"]
    out = pvc / "auto"
    assert be.main(_trt_args("tiny-random", out, *small), environ={"HF_HUB_OFFLINE": "1"}) == 0, _status(out)
    [llm] = trtllm.LLM.instances
    [calib] = (pvc / ".calibration").iterdir()
    assert mf.read(out).calib_dir == str(calib)
    rows = [json.loads(line)["text"] for line in (calib / "train.jsonl").read_text().splitlines()]
    assert llm.calibration_rows == rows and len(rows) == 3
    assert all(r.startswith("<custom_token_3><|begin_of_text|>") and r.count("<custom_token_") > 21 for r in rows)
    made = (calib / "train.jsonl").stat().st_mtime_ns
    # another engine of the same model and settings: the set is reused, not generated again
    assert be.main(_trt_args("tiny-random", pvc / "auto2", *small, "--max-batch-size", "4"), environ={}) == 0
    assert (calib / "train.jsonl").stat().st_mtime_ns == made and len(trtllm.LLM.instances) == 2


def test_trtllm_hub_calibration_dataset_only_on_request(trtllm, model_dir, pvc, monkeypatch):
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100 80GB HBM3", "sm_90"))
    out = pvc / "hubcal"
    argv = _trt_args(model_dir, out, "--calib-dataset", "cnn_dailymail")
    assert be.main(argv, environ={"HF_HUB_OFFLINE": "1"}) == ExitCode.USAGE  # refused before any work
    assert "HF_HUB_OFFLINE" in _status(out)["message"] and not trtllm.LLM.instances
    # online, the library downloads it; the double has no hub, as a cluster without egress: exit 9
    assert be.main(argv, environ={}) == ExitCode.NETWORK
    assert "cannot download the calibration dataset cnn_dailymail" in _status(out)["message"]
    assert trtllm.LLM.instances == []  # the double raised in its constructor


@pytest.mark.parametrize(
    "arch, quant, code",
    [
        ("sm_100", ["--weight-quantization", "int4_awq"], ExitCode.GPU_UNSUPPORTED),
        ("sm_103", ["--weight-quantization", "int8", "--kv-cache-dtype", "auto"], ExitCode.GPU_UNSUPPORTED),
        ("sm_110", ["--weight-quantization", "none", "--kv-cache-dtype", "int8"], ExitCode.GPU_UNSUPPORTED),
        ("sm_100", ["--weight-quantization", "none", "--kv-cache-dtype", "auto"], ExitCode.OK),
        ("sm_120", ["--weight-quantization", "int4_awq"], ExitCode.OK),
    ],
)
def test_trtllm_blackwell_datacentre_refuses_integer_quantization_up_front(trtllm, model_dir, pvc, monkeypatch,
                                                                           tmp_path, arch, quant, code):  # fmt: skip
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA B200", arch))
    out = pvc / "bw"
    argv = _trt_args(model_dir, out, *quant, "--calib-dir", str(_calib_dir(tmp_path / "c")))
    assert be.main(argv, environ={}) == code
    if code == ExitCode.GPU_UNSUPPORTED:
        message = _status(out)["message"]
        assert f"NVIDIA B200 ({arch})" in message and "--weight-quantization none --kv-cache-dtype auto" in message
        assert not trtllm.LLM.instances  # before any download or calibration
