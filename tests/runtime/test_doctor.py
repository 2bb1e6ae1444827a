"""`orpheus-tts doctor`: on this CPU machine (the torch image's path), and against the TensorRT-LLM test
double (tests/runtime/trtllm_double) for the trtllm path. What only a real GPU node can show (driver
version, real library loading) is listed in docs/engine-build.md."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from trtllm_double.install import DOUBLE, installed

from orpheus_tts.build import build_engine as be
from orpheus_tts.build import doctor
from orpheus_tts.build import manifest as mf
from orpheus_tts.build.doctor import Facts
from orpheus_tts.build.exit_codes import ExitCode
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.serve.loader import LoadError, load_engine

TOOLS = {"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1.48"}
LIBNVINFER = "libnvinfer.so.10: cannot open shared object file: No such file or directory"


def _h100(**kw) -> Facts:
    return Facts(**{"versions": dict(TOOLS), "gpu_name": "NVIDIA H100", "gpu_arch": "sm_90", "gpu_count": 1,
                    "trtllm_installed": True, **kw})  # fmt: skip


def _trt_manifest(**kw) -> mf.Manifest:
    return mf.Manifest(**{"backend": "trtllm", "model_repo": "m", "requested_revision": None, "resolved_commit": None,
                          "weight_quantization": "int4_awq", "kv_cache_dtype": "int8", "max_batch_size": 20,
                          "max_input_len": 48, "max_output_len": 1024, "tools": dict(TOOLS), "gpu_agnostic": False,
                          "gpu_name": "NVIDIA H100", "gpu_arch": "sm_90", **kw})  # fmt: skip


def test_assess():
    assert doctor.assess(_h100(), "trtllm") == []
    assert doctor.assess(Facts(), "torch") == []  # the CPU image serves torch engines without a GPU
    codes = [p.code for p in doctor.assess(Facts(), "trtllm")]
    assert codes == [ExitCode.NO_TRTLLM, ExitCode.NO_GPU]
    [p] = doctor.assess(_h100(tensorrt_error=f"ImportError: {LIBNVINFER}"), "trtllm")
    assert p.code == ExitCode.NO_TRTLLM and "libnvinfer.so.10" in p.message and "/usr/local/tensorrt/lib" in p.message
    [p] = doctor.assess(_h100(tensorrt_error="x", ld_library_path="/usr/local/tensorrt/lib:/x"), "trtllm")
    assert "LD_LIBRARY_PATH" not in p.message  # the path is right: the hint would mislead
    [p] = doctor.assess(_h100(gpu_name="Tesla T4", gpu_arch="sm_75"), "trtllm")
    assert p.code == ExitCode.GPU_UNSUPPORTED and "Tesla T4 (sm_75)" in p.message
    # an engine: matched against this GPU and these versions
    assert doctor.assess(_h100(), "trtllm", _trt_manifest(), "/e") == []
    [p] = doctor.assess(_h100(gpu_name="NVIDIA A100", gpu_arch="sm_80"), "trtllm", _trt_manifest(), "/e")
    assert p.code == ExitCode.ENGINE_MISMATCH and "sm_90" in p.message and "sm_80" in p.message
    newer = _h100(versions={**TOOLS, "tensorrt_llm": "1.3.0"})
    [p] = doctor.assess(newer, "trtllm", _trt_manifest(), "/e")
    assert p.code == ExitCode.ENGINE_MISMATCH and "tensorrt_llm 1.3.0 is installed" in p.message
    [p] = doctor.assess(_h100(), "trtllm", _trt_manifest(), "/e", ["engine/rank0.engine is missing"])
    assert p.code == ExitCode.ENGINE_MISMATCH and "rank0.engine is missing" in p.message


def test_driver_version_as_an_h200_node_reports_it():
    text = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \n"
            "GCC version:  gcc version 15.3.0 (GCC) \n")  # fmt: skip
    assert doctor.parse_driver_version(text) == "580.159.04"
    assert doctor.parse_driver_version("") is None


def _doctor(*args: str, env: dict[str, str] | None = None, double: bool = False) -> subprocess.CompletedProcess:
    extra = {"CUDA_VISIBLE_DEVICES": "", **(env or {})}  # deterministic: no GPU, whatever the machine has
    if double:
        extra["PYTHONPATH"] = os.pathsep.join([str(DOUBLE), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "doctor", *args], capture_output=True, text=True,
                          env={**os.environ, **extra}, timeout=120)  # fmt: skip


def test_cpu_torch_image(tmp_path, monkeypatch, capsys):
    proc = _doctor()  # the real command, as the CPU image runs it
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu:          none visible" in proc.stdout and "torch:" in proc.stdout and proc.stdout.endswith("OK\n")
    monkeypatch.setattr(mf, "probe_gpu", lambda: (None, None))  # in-process from here: no GPU either
    out = tmp_path / "engines" / "tiny"
    assert be.main(["--model", "tiny-random", "--out", str(out)], environ={}) == 0
    capsys.readouterr()
    assert doctor.main(["--engine-dir", str(out), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] and body["backend"] == "torch"
    assert body["facts"]["versions"]["torch"] and body["facts"]["gpu_arch"] is None
    (out / "snac" / "config.json").write_text("{}")  # damaged after the build
    assert doctor.main(["--engine-dir", str(out)]) == ExitCode.ENGINE_MISMATCH
    assert "snac/config.json has" in capsys.readouterr().out
    assert doctor.main(["--engine-dir", str(tmp_path / "nope")]) == ExitCode.ENGINE_MISMATCH


def test_trtllm_image_through_the_double():
    proc = _doctor("--backend", "trtllm", double=True)
    assert proc.returncode == ExitCode.NO_GPU, proc.stdout + proc.stderr  # this machine has no GPU
    assert "tensorrt_llm: 1.2.1" in proc.stdout and "tensorrt:     10.14.1.48" in proc.stdout
    assert "libraries:    yes" in proc.stdout and "needs a GPU" in proc.stdout
    broken = {"ORPHEUS_TEST_TENSORRT_IMPORT_ERROR": LIBNVINFER, "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}
    proc = _doctor("--backend", "trtllm", double=True, env=broken)
    assert proc.returncode == ExitCode.NO_TRTLLM
    assert "TensorRT does not load: ImportError: libnvinfer.so.10" in proc.stdout
    assert "does not contain /usr/local/tensorrt/lib" in proc.stdout


def test_trtllm_on_the_cpu_image(capsys):
    assert doctor.main(["--backend", "trtllm"]) == ExitCode.NO_TRTLLM
    assert "TensorRT-LLM is not installed in this image" in capsys.readouterr().out


@pytest.fixture
def trtllm(monkeypatch):
    with installed(monkeypatch) as api:
        yield api


def _trt_engine_dir(root: pathlib.Path, tiny: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(tiny, root / "model", ignore=shutil.ignore_patterns("snac", "*.safetensors"))
    shutil.copytree(tiny / "snac", root / "snac")
    (root / "engine").mkdir()
    (root / "engine" / "rank0.engine").write_bytes(b"engine")
    m = _trt_manifest(max_batch_size=2, max_input_len=32, max_output_len=32)
    m.files = mf.list_files(root)
    mf.write(m, root)
    return root


def test_engine_dir_on_this_gpu_or_another(trtllm, tiny_model_dir, tmp_path, monkeypatch, capsys):
    root = _trt_engine_dir(tmp_path / "e", tiny_model_dir)
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100", "sm_90"))
    assert doctor.main(["--engine-dir", str(root)]) == 0
    assert "backend:      trtllm" in capsys.readouterr().out
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA A100-SXM4-80GB", "sm_80"))
    assert doctor.main(["--engine-dir", str(root)]) == ExitCode.ENGINE_MISMATCH
    assert "rebuild on this GPU type" in capsys.readouterr().out


def test_server_and_build_fail_fast_when_tensorrt_does_not_load(trtllm, tiny_model_dir, tmp_path, monkeypatch):
    """Item 4 of issue 14: the image's loader path lacks TensorRT's libraries. Both the runtime and the
    build say so before doing anything, instead of 'not installed' or a traceback minutes later."""
    monkeypatch.setenv("ORPHEUS_TEST_TENSORRT_IMPORT_ERROR", LIBNVINFER)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100", "sm_90"))
    root = _trt_engine_dir(tmp_path / "e", tiny_model_dir)
    cfg = RuntimeConfig(engine_dir=str(root), device="cpu", max_batch_size=2, max_input_len=32, max_output_len=32)
    with pytest.raises(LoadError, match=r"TensorRT does not load: ImportError: libnvinfer\.so\.10.*LD_LIBRARY_PATH"):
        load_engine(cfg)
    out = tmp_path / "engines" / "x"
    argv = ["--backend", "trtllm", "--model", "tiny-random", "--out", str(out), "--status-file", f"{out}.json"]
    assert be.main(argv, environ={}) == ExitCode.NO_TRTLLM
    assert "libnvinfer.so.10" in json.loads(pathlib.Path(f"{out}.json").read_text())["message"]
    assert not trtllm.LLM.instances


def test_the_trtllm_image_puts_tensorrt_on_the_loader_path():
    """The contract between the image and doctor's check: the same directory, set with ENV (no shell)."""
    root = pathlib.Path(__file__).resolve().parents[2] / "images"
    # Dockerfile instructions with their continuation lines joined: `ENV A=1 \` + `    B=2` is one ENV.
    instructions = [i for f in root.glob("*trtllm*") for i in f.read_text().replace("\\\n", " ").splitlines()]
    settings = [word for i in instructions if i.startswith("ENV ") for word in i.split()[1:]]
    assert any(word.startswith(f"LD_LIBRARY_PATH={doctor.TENSORRT_LIB_DIR}") for word in settings), settings
