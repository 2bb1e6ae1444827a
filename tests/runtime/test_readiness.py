"""The load-aware readiness policy (runtime/orpheus_tts/serve/readiness.py): hysteresis, no flapping, drain wins."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orpheus_tts.serve.readiness import LoadReadiness, Watermarks, readiness_status, watermarks


def test_default_watermarks_follow_the_stream_limit() -> None:
    assert watermarks(20) == Watermarks(high=20, low=18)
    assert watermarks(4) == Watermarks(high=4, low=3)
    assert watermarks(1) == Watermarks(high=1, low=0)
    assert watermarks(20, high_fraction=0.9) == Watermarks(high=18, low=16)
    with pytest.raises(ValueError):
        Watermarks(high=3, low=3)


def test_not_ready_at_high_ready_again_only_at_low() -> None:
    r = LoadReadiness(Watermarks(high=10, low=8))
    assert [r.update(n) for n in (0, 9, 10, 9)] == [True, True, False, False]  # 9 after 10: still full
    assert [r.update(n) for n in (8, 9, 10, 11)] == [True, True, False, False]


@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=200), st.integers(1, 25))
def test_never_flaps(loads: list[int], limit: int) -> None:
    """Between two changes of the answer the load crossed the whole band: a load that wobbles by less than the
    gap never changes it."""
    marks = watermarks(limit)
    r = LoadReadiness(marks)
    answers = [r.update(n) for n in loads]
    for i, (before, after) in enumerate(itertools.pairwise(answers), start=1):
        if before != after:
            assert (loads[i] >= marks.high) if not after else (loads[i] <= marks.low)
    for n, ready in zip(loads, answers, strict=True):
        if n >= marks.high:
            assert not ready
        if n <= marks.low:
            assert ready


def test_status_words() -> None:
    assert readiness_status(draining=True, loaded=True, failed=False, load_ready=True) == "draining"
    assert readiness_status(draining=False, loaded=False, failed=True, load_ready=True) == "failed"
    assert readiness_status(draining=False, loaded=False, failed=False, load_ready=True) == "loading"
    assert readiness_status(draining=False, loaded=True, failed=False, load_ready=False) == "full"
    assert readiness_status(draining=False, loaded=True, failed=False, load_ready=True) == "ready"
    # Drain wins over an idle pod: a draining pod never turns ready again.
    assert readiness_status(draining=True, loaded=True, failed=False, load_ready=True) != "ready"


def test_off_by_default_and_on_by_env() -> None:
    """The decision in docs/deploy.md (load-aware routing): off unless asked for; the operator asks with
    spec.runtime.loadAwareReadiness (tests/operator/test_operator_render.py)."""
    from orpheus_tts.config import RuntimeConfig, from_env

    assert RuntimeConfig().load_aware_readiness is False
    assert from_env({}).load_aware_readiness is False
    assert from_env({"ORPHEUS_LOAD_AWARE_READINESS": "1"}).load_aware_readiness is True
