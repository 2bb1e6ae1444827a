"""`orpheus-tts doctor`: can this image, on this node, build or serve (this engine)? Says why not in seconds.

Prints the versions that matter (orpheus-tts, torch, CUDA, driver, TensorRT-LLM, TensorRT), the GPU and
its compute capability, whether the libraries actually load, and, with `--engine-dir`, whether that
engine's manifest matches this GPU and these versions. Exits non-zero with the reason when not, with the
same codes as build-engine (exit_codes.py): 6 no GPU, 7 GPU unsupported, 10 TensorRT-LLM missing or not
loadable, 11 engine directory not servable here.

`build-engine --backend trtllm` and the server (loader.py) run the same checks in-process before they
start work, so a mismatch fails at once with this message instead of after a download or an engine load.

Facts are gathered once (`gather`); `assess` is pure and tested with made-up facts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from dataclasses import dataclass, field

from orpheus_tts.build import manifest as mf
from orpheus_tts.build.exit_codes import ExitCode

MIN_SM = 80  # Ampere: what our TensorRT engines (INT4-AWQ, INT8 KV, bf16) need
TENSORRT_LIB_DIR = "/usr/local/tensorrt/lib"  # NVIDIA's TensorRT-LLM image (docker/common/install_tensorrt.sh)
NOT_INSTALLED = (
    "TensorRT-LLM is not installed in this image: the trtllm backend needs the TensorRT-LLM runtime image "
    "(nvcr.io/nvidia/tensorrt-llm/release 1.2.x based)"
)
NO_GPU = (
    "the trtllm backend needs a GPU and none is visible "
    "(no nvidia.com/gpu resource, or the NVIDIA container runtime is missing)"
)


@dataclass
class Facts:
    """What this machine offers. `None` means absent; `*_error` says why a library did not load."""

    versions: dict[str, str] = field(default_factory=dict)  # orpheus-tts, torch, cuda, driver, tensorrt_llm, tensorrt
    gpu_name: str | None = None
    gpu_arch: str | None = None  # "sm_90"
    gpu_count: int = 0
    trtllm_installed: bool = False
    tensorrt_error: str | None = None  # import tensorrt failed (libnvinfer not on the loader path, ...)
    trtllm_error: str | None = None  # import tensorrt_llm failed
    ld_library_path: str = ""


@dataclass(frozen=True)
class Problem:
    code: ExitCode
    message: str


def _lib_hint(f: Facts) -> str:
    if TENSORRT_LIB_DIR in f.ld_library_path.split(":"):
        return ""
    return (f" (LD_LIBRARY_PATH does not contain {TENSORRT_LIB_DIR}: NVIDIA's image sets it only in a shell "
            "start-up file; our image sets it with ENV)")  # fmt: skip


def assess(f: Facts, backend: str, engine: mf.Manifest | None = None, engine_dir: str | None = None,
           damaged: list[str] | None = None) -> list[Problem]:  # fmt: skip
    """Pure: what stops `backend` (and the engine, when given) here, most fundamental first."""
    problems = _trtllm_problems(f) if backend == "trtllm" else []
    if engine_dir is not None:
        problems += _engine_problems(f, engine, f"engine {engine_dir}", damaged or [])
    return problems


def _trtllm_problems(f: Facts) -> list[Problem]:
    """The TensorRT-LLM libraries, then the GPU."""
    problems: list[Problem] = []
    if not f.trtllm_installed:
        problems.append(Problem(ExitCode.NO_TRTLLM, NOT_INSTALLED))
    elif f.tensorrt_error:
        problems.append(Problem(ExitCode.NO_TRTLLM, f"TensorRT does not load: {f.tensorrt_error}{_lib_hint(f)}"))
    elif f.trtllm_error:
        problems.append(Problem(ExitCode.NO_TRTLLM, f"TensorRT-LLM does not load: {f.trtllm_error}{_lib_hint(f)}"))
    if f.gpu_arch is None:
        problems.append(Problem(ExitCode.NO_GPU, NO_GPU))
    elif int(f.gpu_arch.removeprefix("sm_")) < MIN_SM:
        old = f"GPU {f.gpu_name} ({f.gpu_arch}) is older than sm_80 (Ampere)"
        problems.append(
            Problem(ExitCode.GPU_UNSUPPORTED, f"{old}: TensorRT-LLM engines here need A100, L4, H100 or newer")
        )
    return problems


def _engine_problems(f: Facts, engine: mf.Manifest | None, where: str, damaged: list[str]) -> list[Problem]:
    """An engine directory: readable and complete, then built for this GPU and these versions."""
    if engine is None:
        return [Problem(ExitCode.ENGINE_MISMATCH, f"{where}: {damaged[0] if damaged else 'no manifest'}")]
    if damaged:
        return [
            Problem(ExitCode.ENGINE_MISMATCH, f"{where} is incomplete or damaged: {'; '.join(damaged)}; rebuild it")
        ]
    env = mf.Environment(gpu_name=f.gpu_name, gpu_arch=f.gpu_arch, tools=f.versions)
    return [
        Problem(ExitCode.ENGINE_MISMATCH, f"{where} cannot be served here: {text}")
        for text in mf.check_compatible(engine, env)
    ]


# ---- I/O ------------------------------------------------------------------------------------------------


def parse_driver_version(text: str) -> str | None:
    """Pure: the driver version from /proc/driver/nvidia/version's first line, e.g. "NVRM version: NVIDIA UNIX
    Open Kernel Module for x86_64  580.159.04  Release Build ..." (as read on an H200 node)."""
    first = text.splitlines()[0] if text else ""
    return next((w for w in first.split() if w[:1].isdigit() and "." in w), None)


def _driver_version() -> str | None:
    try:
        return parse_driver_version(pathlib.Path("/proc/driver/nvidia/version").read_text())
    except OSError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def gather(backend: str) -> Facts:
    """Looks at this machine. For trtllm it imports tensorrt and tensorrt_llm (the real proof that the
    shared libraries load; seconds), which build and serve do next anyway."""
    import importlib.util

    f = Facts(ld_library_path=os.environ.get("LD_LIBRARY_PATH", ""))
    f.versions = mf.tool_versions("torch")
    try:
        import torch

        if torch.version.cuda:
            f.versions["cuda"] = str(torch.version.cuda)
        f.gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        pass
    driver = _driver_version()
    if driver:
        f.versions["driver"] = driver
    f.gpu_name, f.gpu_arch = mf.probe_gpu()
    f.trtllm_installed = importlib.util.find_spec("tensorrt_llm") is not None
    if backend == "trtllm" and f.trtllm_installed:
        try:
            import tensorrt  # type: ignore[import-not-found]

            f.versions["tensorrt"] = str(tensorrt.__version__)
        except Exception as e:  # ImportError / OSError: "libnvinfer.so.10: cannot open shared object file"
            f.tensorrt_error = _first_line(e)
        if f.tensorrt_error is None:
            try:
                import tensorrt_llm  # type: ignore[import-not-found]

                f.versions["tensorrt_llm"] = str(tensorrt_llm.__version__)
            except Exception as e:
                f.trtllm_error = _first_line(e)
    if "tensorrt_llm" not in f.versions and f.trtllm_installed:
        version = mf.tool_versions("trtllm").get("tensorrt_llm")  # package metadata, without importing
        if version:
            f.versions["tensorrt_llm"] = version
    return f


def engine_facts(engine_dir: str) -> tuple[mf.Manifest | None, list[str]]:
    """The engine's manifest (None if unreadable) and what is missing or damaged in the directory."""
    root = pathlib.Path(engine_dir)
    if not root.is_dir():
        return None, [f"directory {root} does not exist"]
    try:
        m = mf.read(root)
    except mf.ManifestError as e:
        return None, [str(e)]
    return m, mf.missing_or_changed(m, root)


def preflight(backend: str, engine_dir: str | None = None) -> Problem | None:
    """The first problem, for build-engine and the server to fail on before doing any work."""
    engine, damaged = engine_facts(engine_dir) if engine_dir else (None, [])
    if engine is not None:
        backend = engine.backend
    problems = assess(gather(backend), backend, engine, engine_dir, damaged)
    return problems[0] if problems else None


def library_problem() -> Problem | None:
    """For the server before it loads a TensorRT engine: TensorRT-LLM is installed but does not load
    (a missing one is reported by the manifest check, which names the version the engine needs)."""
    f = gather("trtllm")
    if not f.trtllm_installed:
        return None
    return next((p for p in assess(f, "trtllm") if p.code == ExitCode.NO_TRTLLM), None)


def render(f: Facts, backend: str, problems: list[Problem], engine_dir: str | None) -> str:
    gpu = f"{f.gpu_name} ({f.gpu_arch}), {f.gpu_count} visible" if f.gpu_arch else "none visible"
    lines = [f"backend:      {backend}", f"gpu:          {gpu}"]
    for name in ("orpheus-tts", "torch", "cuda", "driver", "tensorrt_llm", "tensorrt"):
        lines.append(f"{name + ':':<14}{f.versions.get(name, '-')}")
    if backend == "trtllm":
        loads = "no: " + (f.tensorrt_error or f.trtllm_error or "") if f.tensorrt_error or f.trtllm_error else "yes"
        lines.append(f"{'libraries:':<14}{loads if f.trtllm_installed else 'TensorRT-LLM not installed'}")
    if engine_dir:
        lines.append(f"{'engine:':<14}{engine_dir}")
    lines += [f"PROBLEM ({p.code}): {p.message}" for p in problems] or ["OK"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from orpheus_tts import config

    p = argparse.ArgumentParser(prog="orpheus-tts doctor", description=__doc__.split("\n")[0])
    p.add_argument("--engine-dir", default=None, help="check this engine directory too (default: TRTLLM_ENGINE_DIR)")
    p.add_argument("--backend", choices=["torch", "trtllm"], default=None,
                   help="the backend to check for (default: the engine's, else ORPHEUS_BACKEND)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    args = p.parse_args(argv)
    try:
        cfg = config.from_env()
    except config.ConfigError as e:
        print(f"orpheus-tts doctor: invalid environment: {e}", file=sys.stderr)
        return ExitCode.USAGE
    engine_dir = args.engine_dir or cfg.engine_dir
    engine, damaged = engine_facts(engine_dir) if engine_dir else (None, [])
    backend = args.backend or (engine.backend if engine else cfg.backend)
    facts = gather(backend)
    problems = assess(facts, backend, engine, engine_dir, damaged)
    if args.json:
        body = {"backend": backend, "engine_dir": engine_dir, "facts": dataclasses.asdict(facts),
                "problems": [dataclasses.asdict(x) for x in problems], "ok": not problems}  # fmt: skip
        print(json.dumps(body, indent=2))
    else:
        print(render(facts, backend, problems, engine_dir))
    return problems[0].code if problems else ExitCode.OK
