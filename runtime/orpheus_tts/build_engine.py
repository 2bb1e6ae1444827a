"""`orpheus-tts build-engine`: download a model and build what the server serves, into one directory.

Run by the operator's Job (see docs/engine-build.md). The output directory appears only when complete:
everything is written into a temporary sibling, the manifest last, then renamed into place, so a build
killed at any point leaves nothing `manifest.load_for_serving` accepts. A lock on `<out>.lock` keeps two
builds off one target; an identical finished build makes a rerun a no-op. Failures end with one human
line on stderr and in the status file, and an exit code the operator maps to a status reason.

Layout of a built directory:
  manifest.json   written last (manifest.py)
  model/          HF files: config, tokenizer, and for the torch backend the (optionally int8) weights
  engine/         TensorRT-LLM engine (trtllm backend only)
  snac/           SNAC 24 kHz decoder (config.json + pytorch_model.bin)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import fcntl
import fnmatch
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orpheus_tts import manifest as mf

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_DISK_FULL = 5
EXIT_NO_GPU = 6
EXIT_GPU_UNSUPPORTED = 7
EXIT_LOCKED = 8
EXIT_NETWORK = 9
EXIT_NO_TRTLLM = 10

HUB_EXIT_CODES = {
    "auth": EXIT_AUTH,
    "not_found": EXIT_NOT_FOUND,
    "revision": EXIT_NOT_FOUND,
    "network": EXIT_NETWORK,
    "disk_full": EXIT_DISK_FULL,
}

TINY_RANDOM = "tiny-random"
SNAC_REPO = "hubertsiuzdak/snac_24khz"
SNAC_FILES = ["config.json", "pytorch_model.bin"]
# The Orpheus repos also hold ~100 GB of optimizer/FSDP state: only these top-level files are fetched.
MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "orpheus.json",
]
# What the trtllm engine directory needs next to engine/: tokenizer and config, not the weights.
TOKENIZER_FILES = [p for p in MODEL_FILES if "safetensors" not in p]
MIN_SM_FOR_QUANT = 80  # INT4-AWQ and INT8 KV kernels need Ampere or newer
TERMINATION_LOG = pathlib.Path("/dev/termination-log")


class BuildError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class BuildOptions:
    backend: str
    model: str
    revision: str | None
    out: pathlib.Path
    weight_quantization: str
    kv_cache_dtype: str
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    status_file: pathlib.Path | None = None
    calib_dir: pathlib.Path | None = None
    wait: bool = False
    token: str | None = field(default=None, repr=False)  # never printed, never stored
    offline: bool = False


# ---- arguments -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # Usage errors must reach the status file too, not only argparse's stderr.
        raise BuildError(f"invalid arguments: {message} (see --help)", EXIT_USAGE)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="orpheus-tts build-engine", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["torch", "trtllm"], default="torch")
    p.add_argument("--model", required=True, help=f"hub repo id, local HF directory, or {TINY_RANDOM}")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--out", required=True, type=pathlib.Path, help="engine directory to create")
    p.add_argument(
        "--weight-quantization",
        choices=["int4_awq", "int8", "none"],
        default=None,
        help="default: int4_awq for trtllm, none for torch",
    )
    p.add_argument(
        "--kv-cache-dtype", choices=["int8", "auto"], default=None, help="default: int8 for trtllm, auto for torch"
    )
    p.add_argument("--max-batch-size", type=int, default=20)
    p.add_argument("--max-input-len", type=int, default=48)
    p.add_argument("--max-output-len", type=int, default=1024)
    p.add_argument("--status-file", type=pathlib.Path, default=None)
    p.add_argument(
        "--calib-dir",
        type=pathlib.Path,
        default=None,
        help="local calibration dataset (train split, text column) for AWQ / INT8 KV",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for another build holding the lock instead of exiting with 8"
    )
    return p


def options_from_args(args: argparse.Namespace, token: str | None, offline: bool) -> BuildOptions:
    trt = args.backend == "trtllm"
    opts = BuildOptions(
        backend=args.backend,
        model=args.model,
        revision=args.revision,
        out=args.out.absolute(),
        weight_quantization=args.weight_quantization or ("int4_awq" if trt else "none"),
        kv_cache_dtype=args.kv_cache_dtype or ("int8" if trt else "auto"),
        max_batch_size=args.max_batch_size,
        max_input_len=args.max_input_len,
        max_output_len=args.max_output_len,
        status_file=args.status_file,
        calib_dir=args.calib_dir.absolute() if args.calib_dir else None,
        wait=args.wait,
        token=token,
        offline=offline,
    )
    validate(opts)
    return opts


def validate(o: BuildOptions) -> None:
    for name in ("max_batch_size", "max_input_len", "max_output_len"):
        if getattr(o, name) <= 0:
            raise BuildError(f"--{name.replace('_', '-')} must be positive", EXIT_USAGE)
    if o.backend == "torch" and o.weight_quantization == "int4_awq":
        raise BuildError(
            "--weight-quantization int4_awq needs --backend trtllm (torch supports none, int8)", EXIT_USAGE
        )
    if o.backend == "torch" and o.kv_cache_dtype != "auto":
        raise BuildError("--kv-cache-dtype int8 needs --backend trtllm", EXIT_USAGE)
    if o.calib_dir is not None and not o.calib_dir.is_dir():
        raise BuildError(f"--calib-dir {o.calib_dir} is not a directory", EXIT_USAGE)
    if o.out.name in ("", ".", ".."):
        raise BuildError(f"--out {o.out} must name a directory", EXIT_USAGE)


# ---- status: stderr + status file -----------------------------------------------------------------


class Reporter:
    """Progress on stderr and in the status file; every message passes through `scrub` so that the
    token cannot leak even if a library puts it into an exception text."""

    def __init__(self, status_file: pathlib.Path | None, secret: str | None) -> None:
        self.status_file = status_file
        self.secret = secret

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def phase(self, phase: str, progress: float, message: str) -> None:
        message = self.scrub(message)
        print(f"build-engine: [{phase} {progress:.0%}] {message}", file=sys.stderr, flush=True)
        self._write(phase, progress, message, None)

    def finish(self, exit_code: int, message: str) -> None:
        message = self.scrub(" ".join(message.split()))  # one line, always
        ok = exit_code == EXIT_OK
        self._write("done" if ok else "failed", 1.0 if ok else 0.0, message, exit_code)
        with contextlib.suppress(OSError):
            if TERMINATION_LOG.exists():
                TERMINATION_LOG.write_text(message + "\n")
        print(message, file=sys.stderr, flush=True)  # the last line on stderr

    def _write(self, phase: str, progress: float, message: str, exit_code: int | None) -> None:
        if self.status_file is None:
            return
        body = {"phase": phase, "progress": round(progress, 3), "message": message, "exit_code": exit_code}
        try:
            mf.write_atomically(self.status_file, json.dumps(body) + "\n")
        except OSError as e:
            # The build itself may still succeed; the exit code and stderr still tell the outcome.
            print(f"build-engine: cannot write status file {self.status_file}: {e}", file=sys.stderr)


# ---- lock -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def build_lock(out: pathlib.Path, wait: bool) -> Iterator[None]:
    """flock on <out>.lock: released by the kernel when the process dies, so a killed build never
    leaves a stale lock behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.with_name(out.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BuildError(
                f"another build of {out} is running (lock {out.name}.lock held); retry later or pass --wait",
                EXIT_LOCKED,
            ) from None
        yield
    finally:
        os.close(fd)


# ---- preconditions ---------------------------------------------------------------------------------


def check_trtllm_preconditions(o: BuildOptions) -> tuple[str, str]:
    """Fails with 10 / 6 / 7 before anything is downloaded. Returns the GPU's (name, arch)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_llm") is None:
        raise BuildError(
            "TensorRT-LLM is not installed in this image: the trtllm backend must be built with the "
            "TensorRT-LLM runtime image (nvcr.io/nvidia/tensorrt-llm/release 1.2.x based)",
            EXIT_NO_TRTLLM,
        )
    name, arch = mf.probe_gpu()
    if name is None or arch is None:
        raise BuildError("the trtllm backend needs a GPU to build its engine, and none is visible", EXIT_NO_GPU)
    needs_sm80 = o.weight_quantization == "int4_awq" or o.kv_cache_dtype == "int8"
    if needs_sm80 and int(arch.removeprefix("sm_")) < MIN_SM_FOR_QUANT:
        raise BuildError(
            f"GPU {name} ({arch}) does not support --weight-quantization {o.weight_quantization} "
            f"--kv-cache-dtype {o.kv_cache_dtype}: INT4-AWQ and INT8 KV need sm_80 or newer "
            "(A100, L4, H100...)",
            EXIT_GPU_UNSUPPORTED,
        )
    return name, arch


def planned_manifest(o: BuildOptions, gpu: tuple[str, str] | None) -> mf.Manifest:
    """The manifest this build will write, minus files and results: compared with an existing one."""
    return mf.Manifest(
        backend=o.backend,
        model_repo=o.model,
        requested_revision=o.revision,
        resolved_commit=None,
        weight_quantization=o.weight_quantization,
        kv_cache_dtype=o.kv_cache_dtype,
        max_batch_size=o.max_batch_size,
        max_input_len=o.max_input_len,
        max_output_len=o.max_output_len,
        tools=mf.tool_versions(o.backend),
        gpu_agnostic=gpu is None,
        gpu_name=gpu[0] if gpu else None,
        gpu_arch=gpu[1] if gpu else None,
        snac_model=TINY_RANDOM if o.model == TINY_RANDOM else SNAC_REPO,
        calib_dir=str(o.calib_dir) if o.calib_dir else None,
    )


def already_built(o: BuildOptions, plan: mf.Manifest) -> bool:
    try:
        existing = mf.read(o.out)
    except mf.ManifestError:
        return False
    same = mf.build_identity(existing) == mf.build_identity(plan)
    return same and not mf.missing_or_changed(existing, o.out)


# ---- sources -----------------------------------------------------------------------------------------


def resolve(repo: str, revision: str | None, o: BuildOptions, patterns: list[str]) -> pathlib.Path:
    if pathlib.Path(repo).is_dir():
        return pathlib.Path(repo).absolute()  # a local directory: no hub, no token
    from orpheus_tts import hub

    # The hub cache lives next to the engines (same volume): files are hard-linked from it instead of
    # copied, and a rebuild with other settings does not download again.
    cache = o.out.parent / ".hf-cache"
    try:
        return hub.resolve_model(
            repo, revision, o.token, allow_patterns=patterns, offline=o.offline, cache_dir=str(cache)
        )
    except hub.HubError as e:
        # hub.py's messages already say what to do (gated licence, missing HF_TOKEN, unknown revision...).
        raise BuildError(str(e), HUB_EXIT_CODES.get(e.kind, EXIT_FAILED)) from None


def resolved_commit(path: pathlib.Path) -> str | None:
    """Hub snapshots live in .../snapshots/<commit sha>/; local directories have no commit."""
    return path.name if path.parent.name == "snapshots" else None


def link_or_copy(src: pathlib.Path, dst: pathlib.Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()  # hub snapshot entries are symlinks into blobs/
    if link:
        try:
            os.link(real, dst)
            return
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
    shutil.copyfile(real, dst)


def copy_matching(src: pathlib.Path, dst: pathlib.Path, patterns: list[str]) -> list[str]:
    """Top-level files of src matching patterns, into dst. Returns their names.

    Files from the hub cache are hard-linked (its blobs are immutable and on the same volume); files
    of a user's local directory are copied, so that editing them later cannot change a built engine."""
    link = resolved_commit(src) is not None
    names = sorted(
        p.name for p in src.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )
    for name in names:
        link_or_copy(src / name, dst / name, link)
    return names


def write_tiny_model(dest: pathlib.Path) -> None:
    from orpheus_tts import tiny_model

    tiny_model.make_tiny_model(dest, seed=0)  # with its own (random) SNAC in dest/snac


# ---- int8 weight-only quantization (torch backend) --------------------------------------------------

# Llama projection matrices; embeddings (tied with lm_head) and norms stay in their original dtype.
INT8_SUFFIXES = tuple(f"{p}_proj.weight" for p in ("q", "k", "v", "o", "gate", "up", "down"))


def quantize_int8(weight: Any) -> tuple[Any, Any]:
    """Symmetric per-output-channel int8: w ~= qweight * scales[:, None]; scales in bf16.

    q is computed against the bf16-rounded scale, so dequantisation with the stored scale is exact
    up to the int8 rounding."""
    import torch

    w = weight.float()
    scales = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_model_dir_int8(model_dir: pathlib.Path) -> None:
    """Rewrites every *.safetensors shard in place: `<m>.weight` -> `<m>.qweight` + `<m>.scales`."""
    from safetensors.torch import load_file, save_file

    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(shard)
        out = {}
        for name, t in tensors.items():
            if name.endswith(INT8_SUFFIXES) and t.ndim == 2:
                base = name.removesuffix(".weight")
                out[f"{base}.qweight"], out[f"{base}.scales"] = quantize_int8(t)
            else:
                out[name] = t
        shard.unlink()  # may be a hard link into the hub cache: never write through it
        save_file(out, shard, metadata={"format": "pt", "orpheus_quantization": "int8_weight_only"})
        if index is not None:
            for name in tensors:
                if name.endswith(INT8_SUFFIXES) and name in index["weight_map"]:
                    base = name.removesuffix(".weight")
                    file = index["weight_map"].pop(name)
                    index["weight_map"][f"{base}.qweight"] = index["weight_map"][f"{base}.scales"] = file
    if index is not None:
        index_path.unlink()
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---- the builds --------------------------------------------------------------------------------------


def fetch_model(o: BuildOptions, tmp: pathlib.Path, report: Reporter) -> tuple[pathlib.Path, str | None]:
    """The HF model directory to build from, and its resolved commit."""
    report.phase("downloading", 0.05, f"fetching {o.model}" + (f"@{o.revision}" if o.revision else ""))
    if o.model == TINY_RANDOM:
        src = tmp / "tiny-src"
        write_tiny_model(src)
        return src, None
    src = resolve(o.model, o.revision, o, MODEL_FILES)
    return src, resolved_commit(src)


def fetch_snac(o: BuildOptions, src: pathlib.Path, tmp: pathlib.Path, report: Reporter) -> None:
    report.phase("downloading", 0.3, "fetching the SNAC 24 kHz decoder")
    # Tiny models (and local dirs laid out like them) carry their own SNAC: no hub access needed.
    snac_src = src / "snac" if (src / "snac" / "config.json").exists() else resolve(SNAC_REPO, None, o, SNAC_FILES)
    if not copy_matching(snac_src, tmp / "snac", SNAC_FILES):
        raise BuildError(f"no SNAC files in {snac_src}")


def build_torch(o: BuildOptions, src: pathlib.Path, tmp: pathlib.Path, report: Reporter) -> None:
    if not copy_matching(src, tmp / "model", MODEL_FILES):
        raise BuildError(f"{o.model} holds none of the expected model files ({', '.join(MODEL_FILES)})")
    if not list((tmp / "model").glob("*.safetensors")):
        raise BuildError(f"{o.model} has no *.safetensors weights")
    if o.weight_quantization == "int8":
        report.phase("quantizing", 0.6, "int8 weight-only quantization of the projection matrices")
        quantize_model_dir_int8(tmp / "model")


def build_trtllm(o: BuildOptions, src: pathlib.Path, tmp: pathlib.Path, report: Reporter) -> None:
    copy_matching(src, tmp / "model", TOKENIZER_FILES)
    try:
        from tensorrt_llm._tensorrt_engine import LLM
        from tensorrt_llm.llmapi import BuildConfig, CalibConfig, KvCacheConfig, QuantAlgo, QuantConfig
    except ImportError as e:
        raise BuildError(f"TensorRT-LLM cannot be imported ({e})", EXIT_NO_TRTLLM) from None

    weight_algo = {"int4_awq": QuantAlgo.W4A16_AWQ, "int8": QuantAlgo.W8A16, "none": None}
    quant = QuantConfig(
        quant_algo=weight_algo[o.weight_quantization],  # AWQ group size: the library default, 128
        kv_cache_quant_algo=QuantAlgo.INT8 if o.kv_cache_dtype == "int8" else None,
    )
    # Without --calib-dir the library downloads its default dataset (cnn_dailymail) from the hub.
    calib = CalibConfig(calib_dataset=str(o.calib_dir)) if o.calib_dir else CalibConfig()
    build = BuildConfig(
        max_batch_size=o.max_batch_size,
        max_input_len=o.max_input_len,
        max_seq_len=o.max_input_len + o.max_output_len,
    )
    report.phase("quantizing", 0.4, f"calibrating and quantizing ({o.weight_quantization}, KV {o.kv_cache_dtype})")
    # LLM() quantizes, builds the engine and starts an executor; the small KV pool and the INT8-KV-safe
    # settings keep that executor from failing or hogging memory on the build GPU.
    # The quantized checkpoint and the engine are first written to LLM's workspace (a temp dir by
    # default, i.e. the container's small ephemeral disk): keep it on the engines volume instead.
    workspace = tmp / "workspace"
    workspace.mkdir()
    llm = LLM(
        model=str(src),
        workspace=str(workspace),
        quant_config=quant,
        calib_config=calib,
        build_config=build,
        kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=0.1, enable_block_reuse=False),
        enable_chunked_prefill=False,
    )
    try:
        report.phase("building", 0.85, "saving the TensorRT engine")
        llm.save(str(tmp / "engine"))
    finally:
        llm.shutdown()
        shutil.rmtree(workspace, ignore_errors=True)


def publish(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Swap tmp into out. A replaced build is moved aside first: out is never half-written."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename durable before we report success
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(out: pathlib.Path) -> None:
    """Temp dirs of builds that were killed. Only called with the lock held, so none is active."""
    for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def check_replaceable(out: pathlib.Path) -> None:
    """A rebuild replaces --out wholesale: refuse when it is something other than one of our builds
    (a typo'd --out must not delete a user's directory)."""
    if out.is_symlink() or out.is_file():
        raise BuildError(f"--out {out} exists and is not a directory", EXIT_USAGE)
    if out.is_dir() and any(out.iterdir()) and not (out / mf.MANIFEST_NAME).exists():
        raise BuildError(
            f"refusing to replace {out}: it is not empty and holds no {mf.MANIFEST_NAME} "
            "(not an engine directory); choose another --out or remove it",
            EXIT_USAGE,
        )


def build(o: BuildOptions, report: Reporter, plan: mf.Manifest) -> None:
    check_replaceable(o.out)
    remove_leftovers(o.out)
    tmp = o.out.with_name(f".{o.out.name}.partial-{os.getpid()}")
    tmp.mkdir()
    try:
        src, commit = fetch_model(o, tmp, report)
        fetch_snac(o, src, tmp, report)
        if o.backend == "torch":
            build_torch(o, src, tmp, report)
        else:
            build_trtllm(o, src, tmp, report)
        shutil.rmtree(tmp / "tiny-src", ignore_errors=True)
        report.phase("building", 0.95, "hashing files and writing the manifest")
        plan.resolved_commit = commit
        plan.files = mf.list_files(tmp)
        plan.built_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        mf.write(plan, tmp)
        publish(tmp, o.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a full disk behind a failed build
        raise


def run(o: BuildOptions, report: Reporter) -> str:
    """The whole build; returns the success message or raises BuildError."""
    with build_lock(o.out, o.wait):
        gpu = check_trtllm_preconditions(o) if o.backend == "trtllm" else None
        plan = planned_manifest(o, gpu)
        if already_built(o, plan):
            return f"{o.out} is already built with these settings; nothing to do"
        build(o, report, plan)
    return f"built {o.backend} engine for {o.model} in {o.out}"


def _status_file_in(argv: list[str] | None) -> pathlib.Path | None:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--status-file", type=pathlib.Path, default=None)
    try:
        return p.parse_known_args(sys.argv[1:] if argv is None else argv)[0].status_file
    except SystemExit:
        return None


def main(argv: list[str] | None = None, *, environ: dict[str, str] | None = None) -> int:
    from orpheus_tts import config

    try:
        args = parser().parse_args(argv)
    except BuildError as e:
        # Even with bad arguments, report into the status file when its flag can be read.
        Reporter(_status_file_in(argv), None).finish(e.exit_code, str(e))
        return e.exit_code
    try:
        cfg = config.from_env(environ)
    except config.ConfigError as e:
        Reporter(args.status_file, None).finish(EXIT_USAGE, f"invalid environment: {e}")
        return EXIT_USAGE
    report = Reporter(args.status_file, cfg.hf_token)
    try:
        opts = options_from_args(args, cfg.hf_token, cfg.hf_offline)
        message = run(opts, report)
    except BuildError as e:
        report.finish(e.exit_code, str(e))
        return e.exit_code
    except OSError as e:
        code = EXIT_DISK_FULL if e.errno == errno.ENOSPC else EXIT_FAILED
        report.finish(code, ("disk full: " if code == EXIT_DISK_FULL else "build failed: ") + str(e))
        return code
    except Exception as e:  # a library failure (quantization, engine build): report it, don't trace
        report.finish(EXIT_FAILED, f"build failed: {type(e).__name__}: {e}")
        return EXIT_FAILED
    report.finish(EXIT_OK, message)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
