"""What `POST /v1/audio/speech` needs to answer the way OpenAI's SDK expects: its request body, voice names and audio
formats.

The compressed formats are encoded with FFmpeg's encoders through PyAV, chunk by chunk as the PCM arrives, so
a client hears the first audio as soon as the encoder has a frame's worth (mp3: 576 samples = 24 ms; opus:
20 ms frames in Ogg pages flushed every 100 ms; aac: 1024 samples; flac: 2304 samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from orpheus_tts.audio import SAMPLE_RATE
from orpheus_tts.protocol import Problem, sampling_fields, show

# OpenAI's voices -> Orpheus voices, chosen by register (OpenAI's descriptions of its voices): an SDK user's
# `voice="alloy"` gets a voice rather than a 400. A model whose own voices include one of these names keeps it.
OPENAI_VOICES: dict[str, str] = {
    "alloy": "tara",
    "ash": "dan",
    "ballad": "leo",
    "coral": "leah",
    "echo": "zac",
    "fable": "leo",
    "nova": "jess",
    "onyx": "dan",
    "sage": "mia",
    "shimmer": "zoe",
    "verse": "zac",
    "marin": "leah",
    "cedar": "leo",
}

DEFAULT_FORMAT = "mp3"  # OpenAI's default when `response_format` is not given


@dataclass(frozen=True)
class AudioFormat:
    content_type: str
    container: str | None = None  # FFmpeg muxer; None: raw PCM or our own WAV
    codec: str | None = None  # FFmpeg encoder
    options: tuple[tuple[str, str], ...] = ()  # muxer options


FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("audio/mpeg", "mp3", "libmp3lame"),
    # Ogg Opus, as OpenAI sends it. Ogg holds a page until it has 1 s of audio by default: 100 ms keeps it a stream.
    "opus": AudioFormat("audio/ogg", "ogg", "libopus", (("page_duration", "100000"),)),
    "aac": AudioFormat("audio/aac", "adts", "aac"),
    "flac": AudioFormat("audio/flac", "flac", "flac"),
    "wav": AudioFormat("audio/wav"),
    "pcm": AudioFormat("audio/pcm"),
}


def resolve_voice(voice: str | None, voices: tuple[str, ...], default: str) -> str:
    """The model's voice for a request's `voice` (None: the default); an unknown name is returned as is (the
    synthesizer refuses it with `unknown_voice`)."""
    if voice is None:
        return default
    if voice in voices:
        return voice
    return OPENAI_VOICES.get(voice.lower(), voice)


class _Sink:
    """Where the muxer writes; taken after each chunk. No `seek`: FFmpeg treats it as a stream."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class StreamEncoder:
    """24 kHz mono s16le PCM in, encoded bytes out, as they are ready. Not thread-safe; one per response."""

    def __init__(self, fmt: AudioFormat) -> None:
        assert fmt.container is not None and fmt.codec is not None
        self._sink = _Sink()
        options = {"flush_packets": "1", **dict(fmt.options)}
        self._container = av.open(self._sink, mode="w", format=fmt.container, container_options=options)
        stream = self._container.add_stream(fmt.codec, rate=SAMPLE_RATE, layout="mono")
        assert isinstance(stream, av.AudioStream)  # an audio codec's stream (for the type checker)
        self._stream = stream
        ctx = stream.codec_context
        # Each encoder takes its own sample format and (most) a fixed number of samples per frame.
        formats = [f.name for f in ctx.codec.audio_formats or ()]
        sample_format = "s16" if "s16" in formats else formats[0]
        self._resampler = av.AudioResampler(format=sample_format, layout="mono", rate=SAMPLE_RATE,
                                            frame_size=ctx.frame_size or None)  # fmt: skip
        self._samples = 0

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self._samples
        self._samples += samples.shape[1]
        self._mux(self._resampler.resample(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        """The rest (buffered samples, encoder delay, the container's trailer)."""
        self._mux(self._resampler.resample(None))
        self._mux([None])
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        """Frees the encoder without finishing (the client went away)."""
        self._container.close()

    def _mux(self, frames: list) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)


def parse_speech_body(body: Any) -> tuple[str, str | None, str, dict[str, Any]] | Problem:
    """OpenAI's /v1/audio/speech body -> (text, voice, format, sampling) or the problem with it."""
    if not isinstance(body, dict):
        return Problem("invalid_request", "body must be a JSON object")
    text, voice = body.get("input"), body.get("voice")
    if not isinstance(text, str):
        return Problem("invalid_request", '"input" must be a string')
    if voice is not None and not isinstance(voice, str):
        return Problem("invalid_request", '"voice" must be a string')
    fmt = body.get("response_format", DEFAULT_FORMAT)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        return Problem("unsupported_format", f"response_format {show(fmt)} is not supported: use one of "
                                             f"{', '.join(FORMATS)}")  # fmt: skip
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed != 1.0:
        return Problem("unsupported_speed", "only speed 1.0 is supported (Orpheus speaks at its own pace)")
    if body.get("stream_format", "audio") != "audio":
        return Problem("unsupported_stream_format", "only stream_format 'audio' is supported")
    return text, voice, fmt, sampling_fields(body)
