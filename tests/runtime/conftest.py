"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny random-weight Orpheus-layout model (with OUT/snac), built once per test session.

    Read-only by convention: tests that modify a model directory copy it first.
    """
    from orpheus_tts.model.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)
