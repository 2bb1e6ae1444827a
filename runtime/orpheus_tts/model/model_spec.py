"""What a model directory is: the Orpheus token layout, the voices, and the Llama shape.

The token layout defaults to Orpheus 3B's (see shared/reference/orpheus-facts.md); a model directory
may override any of it with an `orpheus.json` (the tiny test model writes one, real checkpoints
usually don't). The shape always comes from the HF `config.json`, because that is what the weights match.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

from orpheus_tts.audio import CODES_PER_FRAME, SAMPLE_RATE, SAMPLES_PER_FRAME

ORPHEUS_JSON = "orpheus.json"
VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
INLINE_TAGS = ("<laugh>", "<chuckle>", "<sigh>", "<cough>", "<sniffle>", "<groan>", "<yawn>", "<gasp>")


class ModelSpecError(ValueError):
    """The model directory is missing config.json or holds values we cannot serve."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class LlamaShape:
    """The transformer's dimensions (Llama-3.2-3B by default, Orpheus 3B's)."""

    vocab_size: int = 156940
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_layers: int = 28
    num_heads: int = 24
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = field(default_factory=RopeScaling)
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    torch_dtype: str = "bfloat16"


@dataclass(frozen=True)
class ModelSpec:
    # Token layout. `<custom_token_N>` is id 128256 + N.
    bos: int = 128000
    end_of_text: int = 128009
    start_of_speech: int = 128257
    end_of_speech: int = 128258
    start_of_human: int = 128259
    end_of_human: int = 128260
    start_of_ai: int = 128261
    end_of_ai: int = 128262
    pad: int = 128263
    audio_offset: int = 128266
    codebook_size: int = 4096
    codes_per_frame: int = CODES_PER_FRAME
    stop_ids: tuple[int, ...] = (128258,)
    # Speech. The audio format is SNAC 24 kHz's (audio.py); orpheus.json may state it, check() holds it to that.
    voices: tuple[str, ...] = VOICES
    default_voice: str = "tara"
    sample_rate: int = SAMPLE_RATE
    samples_per_frame: int = SAMPLES_PER_FRAME
    # True for `orpheus-tts make-tiny-model` output: its audio is noise (the playground says so).
    random_weights: bool = False
    shape: LlamaShape = field(default_factory=LlamaShape)

    @property
    def audio_rows(self) -> int:
        """How many vocabulary rows hold audio codes (7 x 4096 for Orpheus)."""
        return self.codes_per_frame * self.codebook_size

    @property
    def audio_end(self) -> int:
        """One past the last audio-code id."""
        return self.audio_offset + self.audio_rows


SNAC_24KHZ_AUDIO = {"codes_per_frame": CODES_PER_FRAME, "sample_rate": SAMPLE_RATE,
                    "samples_per_frame": SAMPLES_PER_FRAME}  # fmt: skip

# Keys of orpheus.json that override ModelSpec fields (everything but the shape).
_OVERRIDABLE = {f.name for f in dataclasses.fields(ModelSpec)} - {"shape"}


def check(spec: ModelSpec) -> ModelSpec:
    vocab = spec.shape.vocab_size
    if spec.audio_end > vocab:
        raise ModelSpecError(
            f"audio codes end at id {spec.audio_end} but the vocabulary has only {vocab} rows: "
            "is this an Orpheus checkpoint?"
        )
    specials = [spec.bos, spec.end_of_text, spec.start_of_speech, spec.start_of_human, spec.end_of_human,
                spec.start_of_ai, spec.end_of_ai, *spec.stop_ids]  # fmt: skip
    bad = [i for i in specials if not 0 <= i < vocab]
    if bad:
        raise ModelSpecError(f"special token ids {bad} are outside the vocabulary (size {vocab})")
    if any(spec.audio_offset <= i < spec.audio_end for i in spec.stop_ids):
        raise ModelSpecError("a stop id lies inside the audio-code range")
    if not spec.stop_ids:
        raise ModelSpecError("stop_ids must not be empty")
    if spec.default_voice not in spec.voices:
        raise ModelSpecError(f"default_voice {spec.default_voice!r} is not one of the voices {list(spec.voices)}")
    audio = {"codes_per_frame": spec.codes_per_frame, "sample_rate": spec.sample_rate,
             "samples_per_frame": spec.samples_per_frame}  # fmt: skip
    if audio != SNAC_24KHZ_AUDIO:
        # The frame decoding (audio_codes.py) and SNAC 24 kHz make exactly this format: another would play wrong.
        raise ModelSpecError(f"{audio} is not the only audio this runtime decodes, SNAC 24 kHz's {SNAC_24KHZ_AUDIO}")
    if spec.shape.num_heads % spec.shape.num_kv_heads:
        raise ModelSpecError("num_heads must be a multiple of num_kv_heads")
    return spec


def shape_from_hf_config(config: dict[str, Any]) -> LlamaShape:
    """Reads the fields we use from a HF LlamaConfig dict; anything that is not a plain Llama is refused."""
    if config.get("model_type", "llama") != "llama":
        raise ModelSpecError(f"model_type {config.get('model_type')!r} is not supported (expected 'llama')")
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        rope = config.get("rope_scaling") or config.get("rope_parameters")
        rope_theta = float(config.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0)
        scaling = None
        if rope and rope.get("rope_type", rope.get("type")) == "llama3":
            scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        elif rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise ModelSpecError(f"rope scaling {rope.get('rope_type', rope.get('type'))!r} is not supported")
        return LlamaShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=int(config.get("max_position_embeddings", 131072)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelSpecError):
            raise
        raise ModelSpecError(f"config.json is not a usable Llama config: {type(e).__name__}: {e}") from None


def spec_from_dicts(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> ModelSpec:
    """Pure: a HF config dict plus optional orpheus.json overrides -> ModelSpec."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - _OVERRIDABLE)
    if unknown:
        # A typo in orpheus.json would otherwise silently fall back to Orpheus defaults.
        raise ModelSpecError(f"{ORPHEUS_JSON}: unknown keys {unknown} (known: {sorted(_OVERRIDABLE)})")
    for key in ("stop_ids", "voices"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    try:
        spec = ModelSpec(shape=shape_from_hf_config(config), **overrides)
    except TypeError as e:
        raise ModelSpecError(f"{ORPHEUS_JSON}: {e}") from None
    return check(spec)


def spec_to_orpheus_json(spec: ModelSpec) -> dict[str, Any]:
    """The orpheus.json content that reproduces `spec`'s token layout and voices."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items() if k != "shape"}


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path} is not a JSON object")
    return data


def load_model_spec(model_dir: str | pathlib.Path) -> ModelSpec:
    model_dir = pathlib.Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelSpecError(f"{model_dir} has no config.json: not a HF-format model directory")
    config = _read_json(config_path)
    overrides_path = model_dir / ORPHEUS_JSON
    overrides = _read_json(overrides_path) if overrides_path.is_file() else None
    return spec_from_dicts(config, overrides)
