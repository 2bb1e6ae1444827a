"""The streaming window policy (pure; no torch): each stream's SNAC frames are cut into overlapping windows
whose kept parts, concatenated, equal one offline `SNAC.decode` of all its frames. snac_decoder.py decodes
the windows; the synthesizer asks for them.

SNAC's decoder is convolutional (no attention in the 24 kHz model), so a sample depends only on nearby
frames. Measured with random weights (noise disabled, fp32, 3 seeds, vs one offline decode):

    left/right context (frames)   1/1        2/1        3/1        1/2        2/2
    SNR (dB)                      43-50      46-53      46-53      46-53      85-91

A code's influence spans about 2.2 frames to the left and 2.5 to the right of its own frame; beyond
2 frames left / 1 right the error is below -40 dB. Right context is latency (a frame is emitted only once
the next one exists), left context only compute, hence 2 left / 1 right: first audio after 2 frames.
Streams end with their true right edge (the last window is decoded without padding), and the first
windows start at the true left edge, so both edges match the offline decode exactly.

Window shapes: a window is its emitted frames plus 2 left and 1 right: 4..WINDOW_FRAMES frames in steady
state, fewer at a stream's start (1..WINDOW_FRAMES frames in all, a small fixed set). Windows of one shape
batch into one model call. A window that emits one frame decodes 4, not WINDOW_FRAMES: under load, when
listeners' buffers run low and frames go out one by one, that keeps SNAC's share of the GPU from growing
exactly when the GPU is short.
"""

from __future__ import annotations

from dataclasses import dataclass

from orpheus_tts.audio import FRAMES_PER_S
from orpheus_tts.speech.audio_codes import Frame

LEFT_CONTEXT = 2
RIGHT_CONTEXT = 1
# Frames emitted per window at most: bigger windows cost fewer decode frames per audio frame
# (WINDOW_FRAMES / MAX_EMIT = 1.75x instead of 4x for the reference decoder's 4-frame-per-frame scheme)
# while a stream still gets new audio every <= 4 frames (341 ms).
MAX_EMIT = 4
WINDOW_FRAMES = LEFT_CONTEXT + MAX_EMIT + RIGHT_CONTEXT


@dataclass(frozen=True)
class Window:
    """Frames decoded together; the samples of frames [keep_from, keep_to) are the stream's next audio."""

    frames: tuple[Frame, ...]
    keep_from: int
    keep_to: int

    @property
    def n_frames(self) -> int:
        return len(self.frames)


class StreamWindows:
    """Per stream (pure): frames in, windows out, in order, each audio frame exactly once."""

    def __init__(self) -> None:
        self._frames: list[Frame] = []
        self._base = 0  # stream index of self._frames[0]: old frames are dropped once no window needs them
        self.received = 0
        self.emitted = 0  # frames whose audio has been handed out in a window

    def add(self, frames: list[Frame]) -> None:
        self._frames += frames
        self.received += len(frames)

    def next_window(self, final: bool = False, min_emit: int = 1) -> Window | None:
        """The next window to decode, or None until more frames arrive. `final`: no more frames will.
        `min_emit` (1..MAX_EMIT): hold back until that many frames can be emitted (unless final)."""
        remaining = self.received - self.emitted
        if final and 0 < remaining <= MAX_EMIT + RIGHT_CONTEXT:
            return self._take(self.received, self.received)  # the true right edge, no padding
        count = min(remaining - RIGHT_CONTEXT, MAX_EMIT)
        if count < max(1, min_emit):
            return None
        return self._take(self.emitted + count, self.emitted + count + RIGHT_CONTEXT)

    def _take(self, emit_to: int, end: int) -> Window:
        start = max(0, self.emitted - LEFT_CONTEXT)
        frames = tuple(self._frames[start - self._base : end - self._base])
        window = Window(frames, self.emitted - start, emit_to - start)
        self.emitted = emit_to
        drop = self.emitted - LEFT_CONTEXT - self._base  # no later window starts before emitted - LEFT_CONTEXT
        if drop > 0:
            del self._frames[:drop]
            self._base += drop
        return window


# -- when a window goes out: the emit policy (issue #17) ----------------------------------------------

# Frames a window waits for at least once audio is playing (policy "frames"). 1 would send a frame the
# moment the listener's buffer runs dry, at 4x the SNAC work per frame: under overload, when every buffer
# is dry, that extra work is what tips the GPU over (measured: docs/benchmarks.md).
PLAYING_MIN_EMIT = 2
# Policy "paced": the audio a listener should still hold when its next window is handed to SNAC: one SNAC
# call under load (10-20 ms on the H200 at batch 64-128) plus the event loop and the network.
PACING_MARGIN_S = 0.06
EMIT_POLICIES = ("frames", "paced")


@dataclass(frozen=True)
class EmitPlan:
    """How many frames the next window waits for, and when to look again even if no frame arrives (the
    listener's buffer shrinks with time, so the answer changes): seconds from now, None for never."""

    min_emit: int
    recheck_s: float | None


def plan_emit(buffered: float | None, policy: str = "frames") -> EmitPlan:
    """The emit plan for a stream whose listener has `buffered` seconds of audio left (None: no audio sent).

    A window emitting k frames decodes k + 3 (its context): one frame at a time is 4x the SNAC work per
    frame, 4 at a time 1.75x. First audio goes out as soon as one frame can be decoded (both policies).
    - "frames" (default): wait for as many frames as the buffer covers, between PLAYING_MIN_EMIT and
      MAX_EMIT; never fewer than 2 once audio plays, so a listener whose buffer is below 2 frames waits
      for the second one (a gap at 0 ms of jitter buffer when generation is slower than that).
    - "paced": the same, counted on the buffer beyond PACING_MARGIN_S, and once the buffer is down to the
      margin, whatever frame there is goes out: the emission is paced by the listener's buffer, not by a
      frame count. Costs SNAC work exactly when streams are behind (1-frame windows)."""
    if buffered is None:
        return EmitPlan(1, None)
    if policy == "frames":
        k = max(PLAYING_MIN_EMIT, min(MAX_EMIT, int(buffered * FRAMES_PER_S)))
        return EmitPlan(k, buffered - (k - 1) / FRAMES_PER_S if k > PLAYING_MIN_EMIT else None)
    if policy != "paced":
        raise ValueError(f"emit policy must be one of {', '.join(EMIT_POLICIES)}, not {policy!r}")
    spare = buffered - PACING_MARGIN_S
    if spare <= 0:
        return EmitPlan(1, None)
    k = max(PLAYING_MIN_EMIT, min(MAX_EMIT, int(spare * FRAMES_PER_S)))
    # Look again when the buffer covers one frame fewer, and at the latest when it reaches the margin.
    return EmitPlan(k, spare - (k - 1) / FRAMES_PER_S if k > PLAYING_MIN_EMIT else spare)


def listener_deadline(first_audio_at: float | None, emitted_frames: int, now: float) -> float:
    """When the listener's buffer runs dry (time.monotonic() seconds), assuming playback from the first
    byte; `now` before the first byte (a stream's first audio is due at once). The SNAC batcher's
    "deadline" order sorts windows by it."""
    if first_audio_at is None:
        return now
    return first_audio_at + emitted_frames / FRAMES_PER_S
