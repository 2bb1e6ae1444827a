"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny random-weight Orpheus-layout model (with OUT/snac), built once per test session.

    Read-only by convention: tests that modify a model directory copy it first.
    """
    from orpheus_tts.model.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)


@pytest.fixture(scope="session")
def fast_model_dir(tiny_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny model with a narrow SNAC decoder (decoder_dim 64, same rates and frame layout): the real
    width costs ~0.2 s per window on a shared CPU core, too slow for tests with many streams. Built once per
    test session; read-only like tiny_model_dir."""
    import torch
    from snac import SNAC

    from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG

    out = tmp_path_factory.mktemp("fast") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = {**SNAC_24KHZ_CONFIG, "decoder_dim": 64}
    torch.manual_seed(0)
    (out / "snac" / "config.json").write_text(json.dumps(config))
    torch.save(SNAC(**config).state_dict(), out / "snac" / "pytorch_model.bin")
    return out
