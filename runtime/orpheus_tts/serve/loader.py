"""What the server serves: the configured engine, its model spec, tokenizer and SNAC source.

Two ways in (docs/architecture.md, "Contracts and their homes"):
- `cfg.engine_dir`: a directory built by `orpheus-tts build-engine`. Its manifest is checked first
  (complete? built for this GPU and these tool versions?), and its `backend` picks the engine. HF files
  are in engine_dir/model/, a TensorRT engine in engine_dir/engine/, SNAC in engine_dir/snac/.
- else `cfg.model`, a hub id or local HF directory, served by the torch engine.

Every failure is a `LoadError` whose message says what to fix; the original error is its `__cause__`.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass

from tokenizers import Tokenizer

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import Engine
from orpheus_tts.model.model_spec import ModelSpec, ModelSpecError, load_model_spec

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """The model or engine cannot be served; the message says why."""


@dataclass
class LoadedModel:
    engine: Engine
    spec: ModelSpec
    tokenizer: Tokenizer
    snac_source: str  # local directory or hub id (snac_decoder.py resolves it)
    description: str


def load_tokenizer(model_dir: pathlib.Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise LoadError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise LoadError(f"cannot load {path}: {e}") from e


def _spec(model_dir: pathlib.Path) -> ModelSpec:
    try:
        return load_model_spec(model_dir)
    except ModelSpecError as e:
        raise LoadError(str(e)) from e


def _snac_source(root: pathlib.Path, fallback: str) -> str:
    """A model or engine directory's own snac/ wins: it is the decoder the package was made with (the
    tiny random model's SNAC, or the copy an offline build bundled)."""
    snac = root / "snac"
    return str(snac) if (snac / "config.json").is_file() else fallback


def load_from_engine_dir(cfg: RuntimeConfig, root: pathlib.Path) -> LoadedModel:
    from orpheus_tts.build.manifest import ManifestError, load_for_serving

    if (root / "engine").is_dir():  # a TensorRT engine: do its libraries load here? (orpheus-tts doctor)
        from orpheus_tts.build.doctor import library_problem

        if (problem := library_problem()) is not None:
            raise LoadError(problem.message)
    try:
        # The manifest, not cfg.backend, decides: the directory is what was built.
        manifest = load_for_serving(root)
    except ManifestError as e:
        raise LoadError(str(e)) from e
    model_dir = root / "model"
    spec, tokenizer = _spec(model_dir), load_tokenizer(model_dir)
    snac = _snac_source(root, manifest.snac_model or cfg.snac_model)
    source = manifest.model_repo + (f"@{manifest.resolved_commit[:12]}" if manifest.resolved_commit else "")
    desc = (f"{manifest.backend} engine {root} ({source}, weights {manifest.weight_quantization}, "
            f"kv {manifest.kv_cache_dtype})")  # fmt: skip
    if manifest.backend == "torch":
        from orpheus_tts.engine.torch_engine import TorchEngine

        engine: Engine = TorchEngine(model_dir, cfg, spec)
    elif manifest.backend == "trtllm":
        from orpheus_tts.engine.trtllm_engine import TrtllmEngine

        engine = TrtllmEngine(root, cfg, spec)
    else:  # load_for_serving refuses unknown backends; this guards against a future one slipping through
        raise LoadError(f"unknown backend {manifest.backend!r} in {root}")
    return LoadedModel(engine, spec, tokenizer, snac, desc)


def load_from_model(cfg: RuntimeConfig) -> LoadedModel:
    from orpheus_tts.build.hub import HubError, resolve_model, snapshot_commit

    if cfg.backend != "torch":
        raise LoadError(f"backend {cfg.backend!r} serves built engines only: set TRTLLM_ENGINE_DIR "
                        "(see `orpheus-tts build-engine`), or use ORPHEUS_BACKEND=torch")  # fmt: skip
    try:
        model_dir = resolve_model(cfg.model, cfg.model_revision, cfg.hf_token, offline=cfg.hf_offline)
    except HubError as e:
        raise LoadError(str(e)) from e
    spec, tokenizer = _spec(model_dir), load_tokenizer(model_dir)
    from orpheus_tts.engine.torch_engine import TorchEngine

    commit = snapshot_commit(model_dir)
    desc = f"torch engine, model {cfg.model}" + (f"@{commit[:12]}" if commit else "")
    return LoadedModel(TorchEngine(model_dir, cfg, spec), spec, tokenizer, _snac_source(model_dir, cfg.snac_model),
                       desc)  # fmt: skip


def load_engine(cfg: RuntimeConfig) -> LoadedModel:
    """Resolves and checks everything, constructs the engine; `await loaded.engine.start()` loads weights."""
    loaded = load_from_engine_dir(cfg, pathlib.Path(cfg.engine_dir)) if cfg.engine_dir else load_from_model(cfg)
    log.info("serving %s", loaded.description)
    return loaded
