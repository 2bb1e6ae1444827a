"""Puts the TensorRT-LLM test double on sys.path for one test, and takes it off again.

Used by tests/runtime/test_build_engine.py and test_trtllm_engine.py. Cached `tensorrt_llm` modules are
dropped on both sides, so that every test imports a fresh double (its class attributes are test knobs).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

DOUBLE = pathlib.Path(__file__).parent


def drop_modules() -> None:
    for name in list(sys.modules):
        if name in ("tensorrt_llm", "tensorrt") or name.startswith("tensorrt_llm."):
            del sys.modules[name]


@contextlib.contextmanager
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The double's `tensorrt_llm.llmapi`, reset: no LLM instances, construction succeeds."""
    monkeypatch.syspath_prepend(str(DOUBLE))
    drop_modules()
    import tensorrt_llm.llmapi as api

    api.LLM.instances.clear()
    api.LLM.fail_on_init = None
    api.LLM.init_seconds = 0.0
    api.LLM.steps_after_abort = 2
    try:
        yield api
    finally:
        drop_modules()
