"""The images really build (images/build.sh, buildah, from the Dockerfiles we publish) and really run as a
`restricted` pod runs them: UID 10001, read-only root filesystem, no capabilities, writable /tmp,
/home/orpheus/.cache and /engines only (see container_images/oci.py). The tiny model has random weights: its audio
is noise, which is enough to show the serving path works inside the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from container_images.oci import ROOT, UID, build_images, image_config, image_rootfs, run, started, writable_dirs

# The pod contract (docs/deploy.md): what every image sets so that a read-only root filesystem works.
CACHE_ENV = {
    "HOME": "/home/orpheus",
    "XDG_CACHE_HOME": "/home/orpheus/.cache",
    "PYTHONDONTWRITEBYTECODE": "1",
}
RUNTIME_ENV = {
    **CACHE_ENV,
    "HF_HOME": "/home/orpheus/.cache/huggingface",
    "TRITON_CACHE_DIR": "/home/orpheus/.cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": "/home/orpheus/.cache/torchinductor",
}


def env_of(ref: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in image_config(ref).get("Env", []))


def test_images_are_named_by_input_hash_and_archived(built):
    assert re.fullmatch(r"localhost/orpheus-tts-operator:[0-9a-f]{16}", built["operator_image"])
    assert re.fullmatch(r"localhost/orpheus-tts-torch:[0-9a-f]{16}", built["torch_image"])
    for name in ("operator", "torch"):
        # A `docker save` archive (what `ctr images import` reads), its layers uncompressed.
        with tarfile.open(built[f"{name}_archive"]) as tar:
            (manifest,) = json.load(tar.extractfile("manifest.json"))
            assert manifest["RepoTags"] == [built[f"{name}_image"]]
            for layer in manifest["Layers"]:
                assert tar.extractfile(layer).read(512)[257:262] == b"ustar"  # a plain tar, not gzip


def test_a_warm_build_rebuilds_nothing(built):
    start = time.monotonic()
    again = build_images()
    assert time.monotonic() - start < 60
    assert {k: v for k, v in again.items()} == {k: v for k, v in built.items() if k != "build_seconds"}


@pytest.mark.parametrize(("name", "expected"), [("operator", CACHE_ENV), ("torch", RUNTIME_ENV)])
def test_image_config_follows_the_pod_contract(built, name, expected):
    config = image_config(built[f"{name}_image"])
    assert config["User"] == f"{UID}:{UID}"  # numeric: the kubelet can check runAsNonRoot
    env = env_of(built[f"{name}_image"])
    assert {k: env.get(k) for k in expected} == expected
    assert "PIP_CERT" not in env


@pytest.mark.parametrize("name", ["operator", "torch"])
def test_build_ca_leaves_no_trace(built, name):
    """The host's CA bundle was a build secret: no file in the image holds it, and nothing is left in /run/secrets."""
    bundle = os.environ.get("PIP_CERT")
    host_bundle = Path(bundle).read_bytes() if bundle else None
    with image_rootfs(built[f"{name}_image"]) as rootfs:
        secrets = rootfs / "run" / "secrets"
        assert not secrets.exists() or not any(secrets.iterdir())
        assert not (rootfs / "opt" / "orpheus-build").exists()
        if host_bundle is not None:
            for sub in ("etc", "root", "opt", "tmp", "run", "home", "app"):
                for path in (rootfs / sub).rglob("*") if (rootfs / sub).exists() else ():
                    if path.is_file() and not path.is_symlink() and path.stat().st_size == len(host_bundle):
                        assert path.read_bytes() != host_bundle, f"{path.relative_to(rootfs)} is the host's bundle"


def test_operator_image_starts(built, tmp_path):
    status, out = run(
        built["operator_image"], [*image_config(built["operator_image"])["Entrypoint"], "--help"], tmp_path
    )
    assert status == 0, out
    assert "usage: orpheus-operator" in out


def test_runtime_image_help(built, tmp_path):
    status, out = run(built["torch_image"], ["orpheus-tts", "--help"], tmp_path)
    assert status == 0, out
    assert "make-tiny-model" in out and "build-engine" in out


def test_runtime_image_runs_as_the_pod_user_on_a_read_only_root(built, tmp_path):
    script = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid())\n"
        "for p in ('/', '/app', '/home/orpheus'):\n"
        "    try:\n"
        "        pathlib.Path(p, 'probe').write_text('x'); print('writable', p)\n"
        "    except OSError:\n"
        "        print('read-only', p)\n"
        "for p in ('/tmp', '/home/orpheus/.cache', '/engines'):\n"
        "    pathlib.Path(p, 'probe').write_text('x'); print('writable', p)\n"
    )
    status, out = run(built["torch_image"], ["python3", "-c", script], tmp_path)
    assert status == 0, out
    assert out.split() == [
        "10001", "10001",
        "read-only", "/", "read-only", "/app", "read-only", "/home/orpheus",
        "writable", "/tmp", "writable", "/home/orpheus/.cache", "writable", "/engines",
    ]  # fmt: skip


def test_runtime_image_has_the_pinned_requirements(built, tmp_path):
    status, out = run(built["torch_image"], ["python3", "-m", "pip", "list", "--format=json"], tmp_path)
    assert status == 0, out
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.strip().splitlines()[-1])}
    for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert installed.get(name.lower().replace("_", "-")) == version, line


def test_runtime_image_serves_the_tiny_model(built, tmp_path):
    """make-tiny-model into the engine volume, then the image's own command (serve) on it, as the pod would."""
    image = built["torch_image"]
    mounts = writable_dirs(tmp_path)
    status, out = run(image, ["orpheus-tts", "make-tiny-model", "/engines/model"], tmp_path)
    assert status == 0, out
    port = free_port()
    serve = [
        *image_config(image)["Entrypoint"], "serve", "--model", "/engines/model", "--host", "127.0.0.1",
        "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs", "--max-output-len", "256",
    ]  # fmt: skip
    (tmp_path / "output.log").unlink(missing_ok=True)
    with started(image, serve, tmp_path, mounts) as server:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server.process, tmp_path / "output.log")
        body = json.dumps(
            {
                "input": "Hello from the image.",
                "voice": "tara",
                "response_format": "wav",
                "min_tokens": 28,
                "max_tokens": 84,
            }
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            wav = response.read()
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        assert len(wav) > 44  # header plus some (noise) audio
        server.signal("TERM")  # the kubelet's stop: drain, then exit 0
        assert server.process.wait(timeout=60) == 0, (tmp_path / "output.log").read_text()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text(errors='replace')}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout}s: {log.read_text(errors='replace')}")
