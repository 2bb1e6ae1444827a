"""`orpheus-tts make-calibration` with the tiny random model on CPU (its "audio codes" are noise; what is
tested is that the set is what TensorRT-LLM's calibration reads, and that its text maps back to the ids)."""

import json
import os
import subprocess
import sys

import pytest

from orpheus_tts.build import calibration
from orpheus_tts.model.model_spec import load_model_spec
from orpheus_tts.serve.loader import load_tokenizer


def test_text_maps_back_to_every_kind_of_id(tiny_model_dir):
    """The library tokenizes the text column itself: prompts, specials and every codebook must survive."""
    spec = load_model_spec(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    body = tokenizer.encode("tara: Hello, 4 8 1 5 <laugh> ok?", add_special_tokens=False).ids
    codes = [spec.audio_offset + block * spec.codebook_size + (block * 611) % spec.codebook_size for block in range(7)]
    ids = [spec.start_of_human, spec.bos, *body, spec.end_of_text, spec.end_of_human, spec.start_of_ai,
           spec.start_of_speech, *codes, spec.end_of_speech]  # fmt: skip
    text = calibration.sequence_text(ids, tokenizer)
    assert "<custom_token_10>" in text  # the first audio code of block 0 is <custom_token_10>
    calibration.check_round_trip(ids, text, tokenizer)
    with pytest.raises(ValueError, match="does not tokenize back"):
        calibration.check_round_trip(ids, text.replace("<custom_token_10>", "custom_token_10"), tokenizer)


def test_prompts_cycle_sentences_and_voices():
    pairs = calibration.prompts(20, ("tara", "leo"))
    assert len(pairs) == 20 and {v for v, _ in pairs} == {"tara", "leo"}
    assert len({s for _, s in pairs}) == len(calibration.SENTENCES)
    assert calibration.default_key("m", None, 64, 1024) != calibration.default_key("m", "v2", 64, 1024)


def test_make_calibration_command(tiny_model_dir, tmp_path):
    out = tmp_path / "calib"
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "make-calibration", "--model", str(tiny_model_dir),
           "--out", str(out), "--rows", "3", "--max-tokens", "14"]  # fmt: skip
    env_cpu = {"ORPHEUS_DEVICE": "cpu", "ORPHEUS_CUDA_GRAPHS": "0", "ORPHEUS_TORCH_COMPILE": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_cpu}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert calibration.is_complete(out) and not list(tmp_path.glob(".calib.partial-*"))
    rows = calibration.read_rows(out)
    assert len(rows) == 3
    meta = json.loads((out / calibration.META_FILE).read_text())
    assert (meta["rows"], meta["max_tokens"], meta["format_version"]) == (3, 14, calibration.FORMAT_VERSION)
    spec = load_model_spec(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    for row in rows:
        ids = tokenizer.encode(row, add_special_tokens=False).ids
        prompt_end = ids.index(spec.start_of_speech) + 1
        codes = ids[prompt_end:]
        assert ids[0] == spec.start_of_human and 0 < len(codes) <= 14
        # the torch engine's codes: each in the codebook block of its position, no stop id
        for i, t in enumerate(codes):
            block = (t - spec.audio_offset) // spec.codebook_size
            assert block == i % spec.codes_per_frame
    # an existing --out is never overwritten
    again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_cpu}, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr
