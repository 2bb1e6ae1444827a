"""The emit policy (speech/windows.py, issue #17): when a stream's next SNAC window goes out, given the audio
its listener still holds; and the listener deadline the SNAC batcher's "deadline" order sorts by."""

import pytest

from orpheus_tts.speech.windows import (
    FRAMES_PER_S,
    MAX_EMIT,
    PACING_MARGIN_S,
    PLAYING_MIN_EMIT,
    EmitPlan,
    listener_deadline,
    plan_emit,
)

FRAME_S = 1 / FRAMES_PER_S


@pytest.mark.parametrize("policy", ["frames", "paced"])
def test_first_audio_goes_out_with_the_first_frame(policy):
    assert plan_emit(None, policy) == EmitPlan(1, None)


def test_frames_policy_is_the_shipped_one():
    # The values the synthesizer's emit rule had before the policy moved here and "paced" became the default.
    assert plan_emit(0.0).min_emit == plan_emit(-0.3).min_emit == PLAYING_MIN_EMIT == 2
    assert plan_emit(1.5 * FRAME_S).min_emit == plan_emit(2.0 * FRAME_S).min_emit == 2
    assert plan_emit(3.99 * FRAME_S).min_emit == 3
    assert plan_emit(10.0).min_emit == MAX_EMIT
    assert plan_emit(1.5 * FRAME_S).recheck_s is None  # at the floor: only a new frame changes anything
    plan = plan_emit(3.5 * FRAME_S)
    assert plan.recheck_s == pytest.approx(3.5 * FRAME_S - 2 * FRAME_S)


def test_paced_policy_sends_whatever_there_is_once_the_buffer_reaches_the_margin():
    assert plan_emit(PACING_MARGIN_S, "paced") == EmitPlan(1, None)
    assert plan_emit(-0.2, "paced") == EmitPlan(1, None)  # already dry: no floor of 2 frames
    # Above the margin: like "frames", counted on the buffer beyond it...
    assert plan_emit(PACING_MARGIN_S + 10.0, "paced").min_emit == MAX_EMIT
    assert plan_emit(PACING_MARGIN_S + 3.5 * FRAME_S, "paced").min_emit == 3
    # ...and at the floor it looks again exactly when the buffer reaches the margin.
    plan = plan_emit(PACING_MARGIN_S + 1.5 * FRAME_S, "paced")
    assert plan.min_emit == 2 and plan.recheck_s == pytest.approx(1.5 * FRAME_S)


def test_paced_never_waits_past_the_margin():
    # Whatever the buffer, the wait it allows (recheck) never takes the listener below the margin.
    for i in range(1, 200):
        buffered = PACING_MARGIN_S + i * 0.01
        plan = plan_emit(buffered, "paced")
        assert plan.recheck_s is not None and 0 < plan.recheck_s <= buffered - PACING_MARGIN_S + 1e-9


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="emit policy"):
        plan_emit(1.0, "eager")


def test_listener_deadline():
    assert listener_deadline(None, 0, now=50.0) == 50.0  # first audio: due now
    assert listener_deadline(10.0, 0, now=50.0) == 10.0
    assert listener_deadline(10.0, 12, now=11.0) == pytest.approx(10.0 + 12 * FRAME_S)
