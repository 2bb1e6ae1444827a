"""manifest.json: what a built engine directory holds and where it may run.

`orpheus-tts build-engine` writes the manifest last, so a directory without one is an unfinished
build. The server calls `load_for_serving` before loading anything: a TensorRT engine built for another
GPU architecture or another TensorRT(-LLM) version fails at load time with an opaque deserialisation
error, so we refuse it here with a message that says what to rebuild.

Pure parts (`Manifest`, `check_compatible`, `build_identity`) do no I/O; `probe_environment` is the only
place that looks at the GPU and installed packages, and it imports torch lazily.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BACKENDS = ("torch", "trtllm")

# Tools whose exact version an engine of that backend is bound to. Torch-backend directories hold
# plain safetensors, readable by any torch, so nothing pins them.
BOUND_TOOLS: dict[str, tuple[str, ...]] = {"torch": (), "trtllm": ("tensorrt_llm", "tensorrt")}


class ManifestError(RuntimeError):
    """The engine directory cannot be served here; the message says why and what to do."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the engine directory, "/"-separated
    size: int
    sha256: str


@dataclass
class Manifest:
    backend: str  # "torch" | "trtllm"
    model_repo: str  # hub id, local path, or "tiny-random"
    requested_revision: str | None
    resolved_commit: str | None  # hub commit sha actually downloaded; None for local/tiny models
    weight_quantization: str  # "none" | "int8" | "int4_awq"
    kv_cache_dtype: str  # "auto" | "int8"
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    files: list[FileEntry] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)  # orpheus-tts, torch, tensorrt_llm, tensorrt
    # GPU-bound engines (TensorRT) record the GPU they were built on; GPU-agnostic ones leave both None.
    gpu_agnostic: bool = True
    gpu_name: str | None = None
    gpu_arch: str | None = None  # "sm_90"
    snac_model: str | None = None
    calib_dir: str | None = None  # calibration set: a directory, or "hub:<dataset>"; None when not calibrated
    gemm_plugin: str | None = None  # trtllm: "auto" | "disable"
    built_at: str = ""  # ISO 8601 UTC; informative only, never compared
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        # Unknown keys are ignored so that a newer minor addition does not break older readers;
        # incompatible changes bump FORMAT_VERSION instead.
        values = {k: v for k, v in data.items() if k in known}
        values["files"] = [FileEntry(**f) for f in values.get("files", [])]
        return cls(**values)


@dataclass(frozen=True)
class Environment:
    """What the running machine offers, as far as engine compatibility goes."""

    gpu_name: str | None = None
    gpu_arch: str | None = None  # "sm_90"; None when no GPU is visible
    tools: dict[str, str] = field(default_factory=dict)


def build_identity(m: Manifest) -> dict[str, Any]:
    """The inputs that determine a build's output: equal identities mean rebuilding is pointless.

    Timestamps, file hashes and the resolved commit are results, not inputs, so they are left out.
    """
    return {
        "format_version": m.format_version,
        "backend": m.backend,
        "model_repo": m.model_repo,
        "requested_revision": m.requested_revision,
        "weight_quantization": m.weight_quantization,
        "kv_cache_dtype": m.kv_cache_dtype,
        "max_batch_size": m.max_batch_size,
        "max_input_len": m.max_input_len,
        "max_output_len": m.max_output_len,
        "snac_model": m.snac_model,
        "calib_dir": m.calib_dir,
        "gemm_plugin": m.gemm_plugin,
        "gpu_arch": None if m.gpu_agnostic else m.gpu_arch,
        "bound_tools": {t: m.tools.get(t) for t in BOUND_TOOLS.get(m.backend, ())},
    }


def _describe_gpu(arch: str | None, name: str | None) -> str:
    return f"{arch} ({name})" if name else str(arch)


def check_compatible(m: Manifest, env: Environment, backend: str | None = None) -> list[str]:
    """Problems that stop this engine from running in `env` (empty list = fine). No I/O.

    `backend`, when given, is the backend the caller was configured for.
    """
    if m.format_version != FORMAT_VERSION:
        # Nothing else in an unknown format can be trusted, so stop here.
        return [
            f"manifest format version {m.format_version} is not supported "
            f"(this orpheus-tts reads version {FORMAT_VERSION}); rebuild the engine"
        ]
    problems = []
    if m.backend not in BACKENDS:
        problems.append(f"unknown backend {m.backend!r} in manifest (known: {', '.join(BACKENDS)})")
    elif backend is not None and backend != m.backend:
        problems.append(f"engine was built for backend {m.backend!r} but the server is configured for {backend!r}")
    for tool in BOUND_TOOLS.get(m.backend, ()):
        built, running = m.tools.get(tool), env.tools.get(tool)
        if running is None:
            problems.append(f"engine needs {tool} {built} but {tool} is not installed here")
        elif built != running:
            problems.append(
                f"engine was built with {tool} {built} but {tool} {running} is installed; "
                "engines only load with the exact version that built them: rebuild"
            )
    if not m.gpu_agnostic:
        built_on = _describe_gpu(m.gpu_arch, m.gpu_name)
        if env.gpu_arch is None:
            problems.append(f"engine was built for GPU {built_on} but no GPU is visible")
        elif env.gpu_arch != m.gpu_arch:
            problems.append(
                f"engine was built for GPU {built_on} but this GPU is "
                f"{_describe_gpu(env.gpu_arch, env.gpu_name)}; rebuild on this GPU type"
            )
    return problems


# ---- I/O below -------------------------------------------------------------------------------------


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_files(root: pathlib.Path) -> list[FileEntry]:
    """Every regular file under root except the manifest itself, sorted, with size and sha256."""
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME:
            entries.append(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)))
    return entries


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Temp file + fsync + rename: a reader sees the old file (or none) or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write(m: Manifest, engine_dir: pathlib.Path) -> None:
    write_atomically(pathlib.Path(engine_dir) / MANIFEST_NAME, m.to_json())


def read(engine_dir: pathlib.Path) -> Manifest:
    path = pathlib.Path(engine_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"no {MANIFEST_NAME} in {engine_dir}: the engine build did not finish "
            "(or this is not an engine directory); run `orpheus-tts build-engine` again"
        )
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, TypeError) as e:
        raise ManifestError(f"{path} is not a valid manifest ({e}); rebuild the engine") from None


def missing_or_changed(m: Manifest, engine_dir: pathlib.Path, verify_hashes: bool = False) -> list[str]:
    """Files of the manifest that are absent or differ (size always; sha256 when asked: slow on GBs)."""
    problems = []
    for entry in m.files:
        p = pathlib.Path(engine_dir) / entry.path
        if not p.is_file():
            problems.append(f"{entry.path} is missing")
        elif p.stat().st_size != entry.size:
            problems.append(f"{entry.path} has {p.stat().st_size} bytes, manifest says {entry.size}")
        elif verify_hashes and sha256_file(p) != entry.sha256:
            problems.append(f"{entry.path} does not match its sha256")
    return problems


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(backend: str) -> dict[str, str]:
    """Installed versions of what a build/serve with `backend` uses, read from package metadata
    (importing tensorrt_llm takes seconds and starts MPI machinery, so we avoid it here)."""
    names = {"orpheus-tts": "orpheus-tts", "torch": "torch"}
    if backend == "trtllm":
        names["tensorrt_llm"] = "tensorrt_llm"
    versions = {k: v for k, d in names.items() if (v := _version(d)) is not None}
    if backend == "trtllm":
        trt = _tensorrt_version()
        if trt is not None:
            versions["tensorrt"] = trt
    return versions


def _tensorrt_version() -> str | None:
    # The wheel's distribution name varies with the CUDA flavour (tensorrt, tensorrt_cu12, ...), the
    # module's __version__ does not.
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception:
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def probe_gpu() -> tuple[str | None, str | None]:
    """(name, "sm_XY") of CUDA device 0, or (None, None) when there is none."""
    try:
        import torch
    except ImportError:
        return None, None
    if not torch.cuda.is_available():
        return None, None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"sm_{major}{minor}"


def probe_environment(backend: str) -> Environment:
    tools = tool_versions(backend)
    if backend == "trtllm":
        name, arch = probe_gpu()
    else:
        # Torch engines are GPU-agnostic: no need to initialise CUDA just to check the manifest.
        name, arch = None, None
    return Environment(gpu_name=name, gpu_arch=arch, tools=tools)


def load_for_serving(
    engine_dir: str | os.PathLike[str],
    *,
    backend: str | None = None,
    env: Environment | None = None,
    verify_hashes: bool = False,
) -> Manifest:
    """The manifest of a complete engine directory that can run here, or ManifestError saying why not.

    `env` defaults to probing this machine (tests inject one); `backend` is the configured backend, when
    the caller wants a mismatch reported rather than following the manifest.
    """
    root = pathlib.Path(engine_dir)
    if not root.is_dir():
        raise ManifestError(f"engine directory {root} does not exist; build it with `orpheus-tts build-engine`")
    m = read(root)
    if damaged := missing_or_changed(m, root, verify_hashes):
        raise ManifestError(f"engine directory {root} is incomplete or damaged: {'; '.join(damaged)}; rebuild it")
    env = probe_environment(m.backend) if env is None else env
    if problems := check_compatible(m, env, backend):
        raise ManifestError(f"engine {root} cannot be served here: {'; '.join(problems)}")
    return m
