"""The audio format, in one place: what SNAC 24 kHz decodes a frame into and what every endpoint sends (the
WebSocket's binary messages, /v1/audio/speech's pcm and wav, the clients' WAV files). Pure: no torch.

A frame is Orpheus's 7 audio tokens; SNAC's 24 kHz decoder turns one into SAMPLES_PER_FRAME samples (its
decoder rates 8 x 8 x 4 x 2 = 512 samples per coarsest-codebook step, 4 steps per frame; tests/runtime/
test_protocol.py checks this against SNAC's config). The model directory's orpheus.json may state the rate
and frame layout too (model/model_spec.py): they must equal these, since this decoder makes no other.
"""

from __future__ import annotations

SAMPLE_RATE = 24000  # Hz
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes per sample: signed 16-bit little-endian (s16le)
CODES_PER_FRAME = 7  # audio tokens per frame, on SNAC's three codebooks as 1 + 2 + 4 (speech/audio_codes.py)
SAMPLES_PER_FRAME = 2048  # 85.3 ms

FRAMES_PER_S = SAMPLE_RATE / SAMPLES_PER_FRAME  # 11.72: real time needs this many frames a second per stream
BYTES_PER_S = SAMPLE_RATE * CHANNELS * SAMPLE_WIDTH
BYTES_PER_FRAME = SAMPLES_PER_FRAME * CHANNELS * SAMPLE_WIDTH


def pcm_seconds(n_bytes: int) -> float:
    """How long `n_bytes` of PCM in this format play."""
    return n_bytes / BYTES_PER_S
