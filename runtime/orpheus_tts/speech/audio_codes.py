"""Generated token ids -> SNAC frames (pure; no torch).

Orpheus speaks in frames of 7 audio tokens. The i-th audio token (0-based, counted per generation
request) carries `code = id - audio_offset - (i % 7) * codebook_size`, valid iff 0 <= code < codebook_size.
A frame maps onto SNAC's three codebooks as codes_0 = [f0], codes_1 = [f1, f4], codes_2 = [f2, f3, f5, f6].

The public reference decoders get this subtly wrong; each rule below avoids one of their defects:
- code 0 is a valid code (never used as "missing"), so every audio token advances the position;
- the bound is `< codebook_size` (4096 itself is invalid);
- an invalid code drops only its own frame, and the position keeps counting, so later frames stay aligned;
- ids below `audio_offset` (specials such as end-of-speech) are not audio: ignored, position unchanged.
TensorRT-LLM cannot constrain sampling to the position's range, so these checks run on every token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orpheus_tts.audio import CODES_PER_FRAME

Frame = tuple[int, int, int, int, int, int, int]  # CODES_PER_FRAME codes


@dataclass
class FrameAssembler:
    """Stateful: feed the ids of ONE generation request in order, get complete valid frames back."""

    audio_offset: int = 128266
    codebook_size: int = 4096
    position: int = 0  # audio tokens seen so far (valid or not)
    dropped_frames: int = 0
    _codes: list[int] = field(default_factory=list)
    _bad: bool = False

    def push(self, ids: Iterable[int]) -> list[Frame]:
        frames: list[Frame] = []
        for token_id in ids:
            if token_id < self.audio_offset:
                continue
            slot = self.position % CODES_PER_FRAME
            code = token_id - self.audio_offset - slot * self.codebook_size
            self.position += 1
            if 0 <= code < self.codebook_size:
                self._codes.append(code)
            else:
                self._bad = True
            if slot == CODES_PER_FRAME - 1:
                if self._bad:
                    self.dropped_frames += 1
                else:
                    frames.append(tuple(self._codes))  # type: ignore[arg-type]
                self._codes, self._bad = [], False
        return frames

    @property
    def pending(self) -> int:
        """Audio tokens of an incomplete trailing frame (discarded if the request ends here)."""
        return self.position % CODES_PER_FRAME


def frames_from_ids(ids: Iterable[int], audio_offset: int = 128266, codebook_size: int = 4096) -> list[Frame]:
    return FrameAssembler(audio_offset, codebook_size).push(ids)


def snac_codes(frames: list[Frame]) -> tuple[list[int], list[int], list[int]]:
    """Frames -> (codes_0, codes_1, codes_2) with 1, 2 and 4 codes per frame (SNAC's 12/23/47 Hz rates)."""
    codes_0: list[int] = []
    codes_1: list[int] = []
    codes_2: list[int] = []
    for f in frames:
        codes_0.append(f[0])
        codes_1 += (f[1], f[4])
        codes_2 += (f[2], f[3], f[5], f[6])
    return codes_0, codes_1, codes_2


def frame_to_ids(frame: Frame, audio_offset: int = 128266, codebook_size: int = 4096) -> list[int]:
    """The inverse of the mapping, for tests and test doubles: a frame's 7 token ids."""
    return [audio_offset + slot * codebook_size + code for slot, code in enumerate(frame)]
