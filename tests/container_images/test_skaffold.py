"""The real skaffold (v2, built from the Go module proxy by tests/k8s/build-skaffold.sh) on skaffold.yaml, without a
cluster: it accepts the config, renders the chart with the tags it computes, and its `cpu` profile builds both images
through the custom builder (images/build.sh --skaffold) with buildah. `skaffold dev -p cpu` against a real node is
the e2e suite's step (scripts/dev.sh, `make dev`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from k8s.control_plane import build_binaries

from container_images.oci import ROOT, image_config, inspect


@contextmanager
def docker_api(socket: Path) -> Iterator[str]:
    """images/build.sh --docker-api: podman serving a Docker API for buildah's storage -> DOCKER_HOST."""
    proc = subprocess.Popen(["bash", str(ROOT / "images/build.sh"), "--docker-api", str(socket)])
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def skaffold(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """skaffold(*args, check=True) -> CompletedProcess, run from the repository root with helm on PATH, the images'
    Docker API (podman) as DOCKER_HOST, no kubeconfig, and a global config with metrics, update checks and surveys
    off."""
    out = subprocess.run(
        ["bash", str(ROOT / "tests/k8s/build-skaffold.sh")], check=True, capture_output=True, text=True
    )
    binary = out.stdout.strip().splitlines()[-1]
    home = tmp_path_factory.mktemp("skaffold-home")
    (home / ".skaffold").mkdir()
    (home / ".skaffold" / "config").write_text(SKAFFOLD_GLOBAL_CONFIG)  # `render` has no --config flag
    env = {
        **os.environ,
        "HOME": str(home),
        # images/build.sh keeps its cache under $HOME unless told: the one the other tests built.
        "ORPHEUS_CACHE": os.environ.get("ORPHEUS_CACHE", str(Path.home() / ".cache/orpheus-tts")),
        "KUBECONFIG": str(home / "no-kubeconfig"),
        "PATH": f"{build_binaries()}:{os.environ['PATH']}",
        "SKAFFOLD_UPDATE_CHECK": "false",
        "SKAFFOLD_INTERACTIVE": "false",
    }
    env.pop("ORPHEUS_CONTAINERD_ADDRESS", None)  # no cluster here: build without loading into containerd

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        if check and result.returncode != 0:
            raise AssertionError(
                f"skaffold {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    with docker_api(home / "docker.sock") as docker_host:
        env["DOCKER_HOST"] = docker_host
        yield run


# The file scripts/dev.sh passes with --config: skaffold's global config with everything that would phone home off.
SKAFFOLD_GLOBAL_CONFIG = (ROOT / "scripts" / "skaffold-global-config.yaml").read_text()


def test_skaffold_accepts_the_config(skaffold):
    for profile in ([], ["-p", "cpu"]):
        out = skaffold("diagnose", *profile, "--yaml-only").stdout
        config = yaml.safe_load(out)
        assert config["apiVersion"].startswith("skaffold/")
    cpu = yaml.safe_load(skaffold("diagnose", "-p", "cpu", "--yaml-only").stdout)
    assert [a["image"] for a in cpu["build"]["artifacts"]] == [
        "localhost/orpheus-tts-operator",
        "localhost/orpheus-tts-torch",
    ]
    assert all("custom" in a for a in cpu["build"]["artifacts"])


def test_skaffold_renders_the_cpu_profile_with_its_tags(skaffold):
    out = skaffold("render", "-p", "cpu", "--digest-source=tag", "--offline=true").stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("localhost/orpheus-tts-operator:")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ORPHEUS_OPERATOR_RUNTIME_IMAGE"].startswith("localhost/orpheus-tts-torch:")


def test_skaffold_builds_the_cpu_profile_with_buildah(skaffold, tmp_path: Path, built):
    result = skaffold("build", "-p", "cpu", "--cache-artifacts=false", "--file-output", str(tmp_path / "builds.json"))
    builds = {b["imageName"]: b["tag"] for b in json.loads((tmp_path / "builds.json").read_text())["builds"]}
    assert set(builds) == {"localhost/orpheus-tts-operator", "localhost/orpheus-tts-torch"}, result.stderr
    for tag in builds.values():
        assert image_config(tag)["User"] == "10001:10001"
    # The very image images/build.sh built (same layers), under skaffold's tag.
    assert inspect(builds["localhost/orpheus-tts-torch"])["FromImageID"] == inspect(built["torch_image"])["FromImageID"]
