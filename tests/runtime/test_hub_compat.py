"""hub.py's error mapping under huggingface_hub 0.3x (NVIDIA's TensorRT-LLM image) as well as 1.x (ours).

Each version runs tests/runtime/hub_compat/check.py in its own Python against the fake hub of
test_hub.py: the 0.3x one from a small cached venv (scripts/hub-compat-venv.sh, ~30 s the first time).
Before the fix, 0.3x turned every cache/transport failure into AttributeError (no IncompleteSnapshotError
there) and did not recognise `requests` transport errors.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from test_hub import fake_hub  # noqa: F401 -- the fixture, shared

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hub_0x_python() -> str:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "hub-compat-venv.sh")], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"cannot create the huggingface_hub 0.3x venv: {proc.stderr[-2000:]}"
    return proc.stdout.strip().splitlines()[-1]


def _unreachable_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("version", ["1.x", "0.3x"])
def test_hub_errors_map_the_same_under_both_hub_versions(version, fake_hub, tmp_path, request):  # noqa: F811
    python = sys.executable if version == "1.x" else request.getfixturevalue("hub_0x_python")
    endpoint = f"http://127.0.0.1:{fake_hub.server_port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5",
           "HF_HUB_DOWNLOAD_TIMEOUT": "5"}  # fmt: skip
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "runtime" / "hub_compat" / "check.py"), str(tmp_path / "cache"),
         _unreachable_url()],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    kinds = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kinds.pop("version").startswith("0." if version == "0.3x" else "1.")
    assert kinds == {
        "gated": "auth",
        "missing": "not_found",
        "revision": "revision",
        "down": "network",
        "offline": "not_found",
        "unreachable": "network",
        "bare_transport": "network",
        "refused": "auth",
    }
