import json
import pathlib

import pytest

from orpheus_tts.model.model_spec import (
    LlamaShape,
    ModelSpec,
    ModelSpecError,
    RopeScaling,
    load_model_spec,
    shape_from_hf_config,
    spec_from_dicts,
    spec_to_orpheus_json,
)

# The real canopylabs/orpheus-3b-0.1-ft config.json (fields we read).
ORPHEUS_3B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 156940,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}  # fmt: skip


def test_real_orpheus_config_gives_defaults():
    spec = spec_from_dicts(ORPHEUS_3B_CONFIG)
    assert spec == ModelSpec()  # the defaults are Orpheus 3B, shape included
    assert spec.shape.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert spec.audio_rows == 28672 and spec.audio_end == 156938
    assert spec.stop_ids == (128258,) and spec.voices[0] == "tara" and len(spec.voices) == 8


def test_overrides_and_round_trip():
    spec = spec_from_dicts(ORPHEUS_3B_CONFIG, {"voices": ["tara", "x"], "stop_ids": [128258, 128262]})
    assert spec.voices == ("tara", "x") and spec.stop_ids == (128258, 128262)
    assert spec_from_dicts(ORPHEUS_3B_CONFIG, spec_to_orpheus_json(spec)) == spec


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"stop_idz": [1]}, "unknown keys"),
        ({"stop_ids": [200000]}, "outside the vocabulary"),
        ({"stop_ids": [130000]}, "inside the audio-code range"),
        ({"default_voice": "bob"}, "default_voice"),
        ({"sample_rate": 16000}, "SNAC 24 kHz"),  # the audio format is audio.py's, not the directory's
        ({"samples_per_frame": 512}, "SNAC 24 kHz"),
        ({"codes_per_frame": 4}, "SNAC 24 kHz"),
    ],
)
def test_bad_overrides(overrides, match):
    with pytest.raises(ModelSpecError, match=match):
        spec_from_dicts(ORPHEUS_3B_CONFIG, overrides)


def test_small_vocab_refused():
    with pytest.raises(ModelSpecError, match="Orpheus checkpoint"):
        spec_from_dicts({**ORPHEUS_3B_CONFIG, "vocab_size": 128256})


def test_shape_defaults_and_errors():
    cfg = {k: v for k, v in ORPHEUS_3B_CONFIG.items() if k not in ("head_dim", "num_key_value_heads", "rope_scaling")}
    shape = shape_from_hf_config(cfg)
    assert shape.head_dim == 128 and shape.num_kv_heads == 24 and shape.rope_scaling is None
    with pytest.raises(ModelSpecError, match="not a usable Llama config"):
        shape_from_hf_config({"model_type": "llama"})
    with pytest.raises(ModelSpecError, match="model_type"):
        shape_from_hf_config({**ORPHEUS_3B_CONFIG, "model_type": "mistral"})
    with pytest.raises(ModelSpecError, match="yarn"):
        shape_from_hf_config({**ORPHEUS_3B_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    assert isinstance(shape, LlamaShape)


def test_load_from_directory(tmp_path: pathlib.Path):
    with pytest.raises(ModelSpecError, match="no config"):
        load_model_spec(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(ORPHEUS_3B_CONFIG))
    assert load_model_spec(tmp_path) == ModelSpec()
    (tmp_path / "orpheus.json").write_text(json.dumps({"voices": ["zoe"], "default_voice": "zoe"}))
    assert load_model_spec(tmp_path).voices == ("zoe",)
    (tmp_path / "orpheus.json").write_text("[1, 2]")
    with pytest.raises(ModelSpecError, match="not a JSON object"):
        load_model_spec(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelSpecError, match="cannot read"):
        load_model_spec(tmp_path)
