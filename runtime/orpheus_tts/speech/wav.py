"""WAV files of the runtime's audio format (audio.py: 24 kHz mono 16-bit PCM): the server's header and the client's
files."""

from __future__ import annotations

import pathlib
import struct

from orpheus_tts.audio import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH

_UNKNOWN = 0xFFFFFFFF  # RIFF/data sizes of a stream whose length is not known yet (what ffmpeg writes)


def wav_header(data_bytes: int | None = None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header; `data_bytes=None` for a streamed response (sizes set to the 'unknown' maximum)."""
    data = _UNKNOWN if data_bytes is None else data_bytes
    riff = _UNKNOWN if data_bytes is None else 36 + data_bytes
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, sample_rate, byte_rate, CHANNELS * SAMPLE_WIDTH,
                                    8 * SAMPLE_WIDTH)
            + b"data" + struct.pack("<I", data))  # fmt: skip


def write_wav(path: str | pathlib.Path, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> pathlib.Path:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"PCM s16le must have an even number of bytes, got {len(pcm)}")
    path = pathlib.Path(path)
    path.write_bytes(wav_header(len(pcm), sample_rate) + pcm)
    return path


def read_wav_info(path: str | pathlib.Path) -> tuple[int, int, int, int]:
    """(sample_rate, channels, bits_per_sample, n_frames) of a PCM WAV, via the stdlib reader (a second
    opinion on what write_wav wrote)."""
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), 8 * w.getsampwidth(), w.getnframes()
