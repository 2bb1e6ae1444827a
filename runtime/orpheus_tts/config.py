"""The runtime's configuration: one typed dataclass, and the one place environment variables are read.

Names follow the seed deployment (`TRTLLM_*`, `KV_FREE_GPU_FRAC`, `SNAC_*`, `HF_TOKEN`) so that its
users' settings keep working; everything else is prefixed `ORPHEUS_`. CLI flags override the environment
(see `add_cli_flags` / `apply_cli_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "canopylabs/orpheus-3b-0.1-ft"
DEFAULT_SNAC_MODEL = "hubertsiuzdak/snac_24khz"


@dataclass
class RuntimeConfig:
    # What to serve. `engine_dir` (a built engine with manifest.json, see build_engine.py) wins over
    # `model` (a hub repo id or a local HF-format directory, loaded directly by the torch backend).
    model: str = DEFAULT_MODEL
    model_revision: str | None = None
    engine_dir: str | None = None
    snac_model: str = DEFAULT_SNAC_MODEL
    hf_token: str | None = field(default=None, repr=False)  # never printed
    hf_offline: bool = False

    # Engine.
    backend: str = "torch"  # "torch" | "trtllm"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bfloat16" | "float16" | "float32"
    max_input_len: int = 48  # prompt tokens per sentence chunk, special tokens included
    max_output_len: int = 1024  # generated tokens per chunk
    max_batch_size: int = 20  # sequences decoded together (engine slots)
    kv_free_gpu_frac: float = 0.92
    cuda_graphs: bool = True
    engine_high_priority: bool = True  # torch engine: decode on a high-priority CUDA stream (SNAC has its own)
    torch_compile: bool = True  # torch engine and SNAC: fused kernels via torch.compile; CUDA only
    decode_attention: str = "auto"  # torch engine: "auto" (triton on CUDA, sdpa on CPU) | "sdpa" | "triton"
    # torch engine, issue #17 levers (model/kv_quant.py, model/llama.py): the KV cache's storage, "auto" (the
    # model dtype) | "int8" (per-token scales; any GPU) | "fp8" (e4m3; Hopper/Ada); the layers' projections,
    # "auto" | "fp8" (torch._scaled_mm, Hopper/Ada).
    kv_cache_dtype: str = "auto"
    linear_dtype: str = "auto"

    # Audio.
    snac_max_batch: int = 64
    snac_batch_timeout_ms: float = 0.0  # 0: decode whatever is queued as soon as the decoder is free
    snac_device: str = "auto"
    snac_cuda_graphs: bool = True  # one CUDA graph per (window length, batch bucket); CUDA only
    # issue #17 levers (speech/snac_batcher.py, speech/windows.py): SNAC queue order, "shape" (first come
    # first served, shortest windows first) | "deadline" (the listener with the least audio left first);
    # when a window goes out, "frames" (wait for 2..4 frames) | "paced" (by the listener's buffered audio).
    # Default deadline + paced: on the H200 they took streams with a gap (100 ms jitter buffer) at N=192 from
    # 20 to 0 at the same throughput (benchmarks/results/2026-12-01-h200-session-levers.json).
    snac_order: str = "deadline"
    emit_policy: str = "paced"

    # Default sampling (a request may override each).
    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3

    # Server.
    host: str = "0.0.0.0"
    port: int = 8000
    max_streams: int = 0  # admission limit; 0 means max_batch_size
    max_message_bytes: int = 64 * 1024  # larger WebSocket messages are closed with 1009
    max_text_chars: int = 8000
    api_key: str | None = field(default=None, repr=False)  # never printed
    drain_grace_s: float = 30.0
    # A WebSocket with nothing queued and nothing playing for this long is closed (1000, "idle timeout"), so
    # that idle sockets cannot hold stream places. 0: never.
    ws_idle_timeout_s: float = 20.0
    # issue #12: /readyz 503 "full" at the stream limit, 200 again 10% below it (readiness.py). Off by default:
    # a full pod would count as unhealthy to PodDisruptionBudgets, rollouts and alerts, and when every pod is
    # full the Service has no endpoint (a proxy error instead of a clean 1013 / 503); docs/deploy.md says more.
    load_aware_readiness: bool = False
    ws_ping_interval_s: float = 10.0  # a peer that does not answer a ping within half of this is dropped
    max_pending: int = 32  # messages queued per socket (utterances and errors alike); more: error and close 1008
    # An HTTP connection that sends no (complete) request headers for this long, or a kept-alive one with no
    # next request, is closed; a request body that takes longer than http_body_timeout_s to arrive gets 408.
    http_idle_timeout_s: float = 15.0
    http_body_timeout_s: float = 10.0
    # How long a Python thread may hold the GIL while another wants it (CPython's default is 5 ms). The engine
    # thread, the SNAC thread and the event loop hand it over several times per decode step.
    gil_switch_interval_ms: float = 1.0
    log_level: str = "INFO"
    # The browser playground at /playground/ (static page + /playground/info.json); the API key still guards
    # the WebSocket it speaks through.
    playground: bool = True

    @property
    def stream_limit(self) -> int:
        return self.max_streams or self.max_batch_size


# env var -> field. The seed's names first.
ENV_VARS: dict[str, str] = {
    "TRTLLM_ENGINE_DIR": "engine_dir",
    "TRTLLM_MAX_INPUT_LEN": "max_input_len",
    "TRTLLM_MAX_OUTPUT_LEN": "max_output_len",
    "TRTLLM_MAX_BATCH_SIZE": "max_batch_size",
    "KV_FREE_GPU_FRAC": "kv_free_gpu_frac",
    "SNAC_MAX_BATCH": "snac_max_batch",
    "SNAC_BATCH_TIMEOUT_MS": "snac_batch_timeout_ms",
    "HF_TOKEN": "hf_token",
    "HF_HUB_OFFLINE": "hf_offline",
    "ORPHEUS_MODEL": "model",
    "ORPHEUS_MODEL_REVISION": "model_revision",
    "ORPHEUS_SNAC_MODEL": "snac_model",
    "ORPHEUS_BACKEND": "backend",
    "ORPHEUS_DEVICE": "device",
    "ORPHEUS_DTYPE": "dtype",
    "ORPHEUS_CUDA_GRAPHS": "cuda_graphs",
    "ORPHEUS_TORCH_COMPILE": "torch_compile",
    "ORPHEUS_ENGINE_HIGH_PRIORITY": "engine_high_priority",
    "ORPHEUS_DECODE_ATTENTION": "decode_attention",
    "ORPHEUS_KV_CACHE_DTYPE": "kv_cache_dtype",
    "ORPHEUS_LINEAR_DTYPE": "linear_dtype",
    "ORPHEUS_SNAC_DEVICE": "snac_device",
    "ORPHEUS_SNAC_CUDA_GRAPHS": "snac_cuda_graphs",
    "ORPHEUS_SNAC_ORDER": "snac_order",
    "ORPHEUS_EMIT_POLICY": "emit_policy",
    "ORPHEUS_TEMPERATURE": "temperature",
    "ORPHEUS_TOP_P": "top_p",
    "ORPHEUS_REPETITION_PENALTY": "repetition_penalty",
    "HOST": "host",
    "PORT": "port",
    "ORPHEUS_MAX_STREAMS": "max_streams",
    "ORPHEUS_MAX_MESSAGE_BYTES": "max_message_bytes",
    "ORPHEUS_MAX_TEXT_CHARS": "max_text_chars",
    "ORPHEUS_API_KEY": "api_key",
    "ORPHEUS_DRAIN_GRACE_S": "drain_grace_s",
    "ORPHEUS_WS_IDLE_TIMEOUT_S": "ws_idle_timeout_s",
    "ORPHEUS_LOAD_AWARE_READINESS": "load_aware_readiness",  # issue #12
    "ORPHEUS_WS_PING_INTERVAL_S": "ws_ping_interval_s",
    "ORPHEUS_MAX_PENDING": "max_pending",
    "ORPHEUS_HTTP_IDLE_TIMEOUT_S": "http_idle_timeout_s",
    "ORPHEUS_HTTP_BODY_TIMEOUT_S": "http_body_timeout_s",
    "ORPHEUS_GIL_SWITCH_INTERVAL_MS": "gil_switch_interval_ms",
    "ORPHEUS_LOG_LEVEL": "log_level",
    "ORPHEUS_PLAYGROUND": "playground",
}

# Env names the runtime does not read itself but its libraries do; the images and the operator set them.
# With ENV_VARS, every env name the operator may render into a runtime or build pod (tests/test_contracts.py).
LIBRARY_ENV: dict[str, str] = {
    "HF_HOME": "huggingface_hub's cache (the build Job keeps it on the engines volume, so a retry resumes)",
    "TLLM_WORKER_USE_SINGLE_PROCESS": "TensorRT-LLM runs its worker in-process instead of through MPI (one GPU a pod)",
}

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RuntimeConfig)}


class ConfigError(ValueError):
    pass


def _parse(name: str, raw: str) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: cannot parse {raw!r} as {kind}") from None
    if "None" in kind and raw == "":
        return None  # an empty optional (e.g. TRTLLM_ENGINE_DIR="") means unset
    return raw


def validate(cfg: RuntimeConfig) -> RuntimeConfig:
    if cfg.backend not in ("torch", "trtllm"):
        raise ConfigError(f"backend must be 'torch' or 'trtllm', not {cfg.backend!r}")
    for name in ("max_input_len", "max_output_len", "max_batch_size", "snac_max_batch", "port", "max_pending",
                 "ws_ping_interval_s", "http_idle_timeout_s", "http_body_timeout_s"):  # fmt: skip
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 < cfg.kv_free_gpu_frac <= 1.0:
        raise ConfigError(f"kv_free_gpu_frac must be in (0, 1], got {cfg.kv_free_gpu_frac}")
    if cfg.kv_cache_dtype not in ("auto", "int8", "fp8"):
        raise ConfigError(f"kv_cache_dtype must be auto, int8 or fp8, not {cfg.kv_cache_dtype!r}")
    if cfg.linear_dtype not in ("auto", "fp8"):
        raise ConfigError(f"linear_dtype must be auto or fp8, not {cfg.linear_dtype!r}")
    if cfg.snac_order not in ("shape", "deadline"):
        raise ConfigError(f"snac_order must be shape or deadline, not {cfg.snac_order!r}")
    if cfg.emit_policy not in ("frames", "paced"):
        raise ConfigError(f"emit_policy must be frames or paced, not {cfg.emit_policy!r}")
    if cfg.snac_batch_timeout_ms < 0:
        raise ConfigError("snac_batch_timeout_ms must be >= 0")
    if cfg.ws_idle_timeout_s < 0:
        raise ConfigError("ws_idle_timeout_s must be >= 0 (0: never)")
    return cfg


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> RuntimeConfig:
    """Defaults, then the environment, then explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, name in ENV_VARS.items():
        if var in environ:
            values[name] = _parse(name, environ[var])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(RuntimeConfig(**values))


# glibc's own malloc variables, and preloads of other allocators: their user's choice wins over memory.py's.
ALLOCATOR_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "GLIBC_TUNABLES")  # fmt: skip


def allocator_tuned_by_env(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(v in environ for v in ALLOCATOR_ENV) or any(
        name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")
    )


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key the client commands (`say`, `warmup`, `bench`) send: ORPHEUS_API_KEY, the same variable
    the server reads, so that the key never has to appear on a command line (visible in `ps`)."""
    environ = os.environ if environ is None else environ
    return environ.get("ORPHEUS_API_KEY") or None


def add_cli_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Adds `--field-name` flags for the given fields (all when None); unset flags leave env values."""
    for f in dataclasses.fields(RuntimeConfig):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        else:
            conv = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, default=None, type=conv)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    names = set(_FIELD_TYPES)
    return from_env(environ, **{k: v for k, v in vars(args).items() if k in names})
