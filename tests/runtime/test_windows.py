"""The window policy (pure, no torch); test_snac_decoder.py checks that decoding its windows equals one offline
decode."""

import random

import pytest

from orpheus_tts.speech.windows import LEFT_CONTEXT, MAX_EMIT, RIGHT_CONTEXT, WINDOW_FRAMES, StreamWindows


def random_frames(n: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    return [tuple(rng.randrange(4096) for _ in range(7)) for _ in range(n)]


def plan(frames, steps):
    """Feeds frames in chunks of the given sizes (cycled), collecting windows as a streaming caller would."""
    sw, windows, i, k = StreamWindows(), [], 0, 0
    while i < len(frames):
        step = steps[k % len(steps)]
        sw.add(frames[i : i + step])
        i, k = i + step, k + 1
        while (w := sw.next_window()) is not None:
            windows.append(w)
    while (w := sw.next_window(final=True)) is not None:
        windows.append(w)
    return sw, windows


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 8, 15, 40])
@pytest.mark.parametrize("steps", [[1], [3, 1], [100]])
def test_windows_cover_every_frame_once_with_context(n, steps):
    frames = random_frames(n, n)
    sw, windows = plan(frames, steps)
    covered = []
    for w in windows:
        assert 1 <= w.n_frames <= WINDOW_FRAMES
        assert 0 <= w.keep_from < w.keep_to <= w.n_frames
        start = len(covered) - w.keep_from  # stream index of the window's first frame
        assert list(w.frames) == frames[start : start + w.n_frames]
        # Context: enough on each side, or the true edge of the stream.
        assert w.keep_from >= LEFT_CONTEXT or start == 0
        assert w.n_frames - w.keep_to >= RIGHT_CONTEXT or start + w.n_frames == n
        covered += frames[start + w.keep_from : start + w.keep_to]
    assert covered == frames
    assert sw.emitted == n


def test_first_audio_after_one_plus_right_context_frames():
    sw = StreamWindows()
    sw.add(random_frames(RIGHT_CONTEXT, 0))
    assert sw.next_window() is None
    sw.add(random_frames(1, 1))
    w = sw.next_window()
    assert (w.keep_from, w.keep_to) == (0, 1)


def test_windows_decode_emitted_frames_plus_context():
    # Frames one at a time: each window emits one frame and decodes 2 left + 1 + 1 right, not WINDOW_FRAMES.
    _, windows = plan(random_frames(60, 3), [1])
    steady = windows[2:-1]
    assert {w.n_frames for w in steady} == {LEFT_CONTEXT + 1 + RIGHT_CONTEXT}
    assert all(w.keep_from == LEFT_CONTEXT and w.keep_to - w.keep_from == 1 for w in steady)
    _, windows = plan(random_frames(60, 3), [100])  # a burst: windows emit MAX_EMIT frames each
    assert all(w.keep_to - w.keep_from == MAX_EMIT for w in windows[:-2])


def test_min_emit_holds_frames_back_until_final():
    sw = StreamWindows()
    sw.add(random_frames(MAX_EMIT, 0))  # MAX_EMIT - RIGHT_CONTEXT can go out
    assert sw.next_window(min_emit=MAX_EMIT) is None
    sw.add(random_frames(RIGHT_CONTEXT, 1))
    w = sw.next_window(min_emit=MAX_EMIT)
    assert w.keep_to - w.keep_from == MAX_EMIT
    sw.add(random_frames(2, 2))
    assert sw.next_window(min_emit=MAX_EMIT) is None
    w = sw.next_window(final=True, min_emit=MAX_EMIT)  # the end flushes whatever is left
    assert w.keep_to - w.keep_from == 3 and sw.emitted == sw.received
