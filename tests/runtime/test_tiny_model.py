import json
import pathlib

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from orpheus_tts import cli
from orpheus_tts.model.model_spec import ModelSpec, load_model_spec
from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG, make_tiny_model


def test_layout(tiny_model_dir: pathlib.Path):
    spec = load_model_spec(tiny_model_dir)
    defaults = ModelSpec()
    assert spec.shape.vocab_size == 156940 and spec.shape.tie_word_embeddings
    assert spec.shape.num_kv_heads < spec.shape.num_heads  # GQA
    assert spec.shape.rope_scaling == defaults.shape.rope_scaling
    assert (spec.bos, spec.end_of_speech, spec.audio_offset, spec.voices) == (
        defaults.bos, defaults.end_of_speech, defaults.audio_offset, defaults.voices)  # fmt: skip
    assert spec.random_weights and not defaults.random_weights  # what the playground warns about

    weights = load_file(tiny_model_dir / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (156940, spec.shape.hidden_size)
    assert "lm_head.weight" not in weights
    assert len([k for k in weights if k.endswith("q_proj.weight")]) == spec.shape.num_layers == 2


def test_tokenizer_special_ids(tiny_model_dir: pathlib.Path):
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert tok.token_to_id("<|begin_of_text|>") == 128000
    assert tok.token_to_id("<|eot_id|>") == 128009
    for n, role in [(1, 128257), (2, 128258), (3, 128259), (4, 128260), (5, 128261), (6, 128262), (7, 128263)]:
        assert tok.token_to_id(f"<custom_token_{n}>") == role
    assert tok.token_to_id("<custom_token_28683>") == 156939
    assert max(tok.get_vocab().values()) == 156939  # (get_vocab_size counts entries, and the ids have a gap)
    ids = tok.encode("tara: Hello world <laugh>").ids
    assert ids[0] == 128000 and all(i < 128000 for i in ids[1:])  # BOS added, text ids are small
    text = "tara: Hello world <laugh>"
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    assert tok.encode("<custom_token_3>", add_special_tokens=False).ids == [128259]  # atomic special


def test_snac_loads(tiny_model_dir: pathlib.Path):
    import snac

    assert json.loads((tiny_model_dir / "snac" / "config.json").read_text()) == SNAC_24KHZ_CONFIG
    model = snac.SNAC.from_pretrained(str(tiny_model_dir / "snac"))
    codes = [torch.zeros(1, n, dtype=torch.long) for n in (1, 2, 4)]
    with torch.inference_mode():
        audio = model.decode(codes)
    assert audio.shape == (1, 1, 2048)


def test_deterministic_and_seeded(tmp_path: pathlib.Path, tiny_model_dir: pathlib.Path):
    a = make_tiny_model(tmp_path / "a", seed=0, with_snac=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "orpheus.json"):
        assert (a / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert cli.main(["make-tiny-model", str(tmp_path / "b"), "--seed", "1", "--no-snac"]) == 0
    wa, wb = load_file(a / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert not torch.equal(wa["model.norm.weight"], wb["model.norm.weight"])
    assert not (tmp_path / "b" / "snac").exists()
