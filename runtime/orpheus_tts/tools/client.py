"""`orpheus-tts say` and `orpheus-tts warmup`: a WebSocket client of a running server.

Imports no torch: it is what users run on their laptops against a remote server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from orpheus_tts.audio import pcm_seconds
from orpheus_tts.config import client_api_key
from orpheus_tts.protocol import END_OF_UTTERANCE, INTEGER_SAMPLING_FIELDS, SAMPLING_FIELDS, WS_PATH
from orpheus_tts.speech.wav import write_wav

DEFAULT_URL = f"ws://127.0.0.1:8000{WS_PATH}"


class TtsError(RuntimeError):
    """The server answered with an error message or closed the socket; `code` is its error code or
    `close_<n>` (e.g. close_1013 when busy)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


API_KEY_HELP = "default: $ORPHEUS_API_KEY (prefer it: a flag is visible to other users in `ps`)"


def add_api_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=client_api_key(), help=f"sent as Authorization: Bearer; {API_KEY_HELP}")


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def utterance_chunks(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[bytes]:
    """The PCM chunks of the next answer on the socket, up to the end marker; raises TtsError on an error."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            if msg.data == END_OF_UTTERANCE:
                return
            yield msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            obj = json.loads(msg.data)
            if obj.get("type") == "error":
                raise TtsError(obj.get("code", "error"), obj.get("message", ""))
        else:
            reason = msg.extra if isinstance(msg.extra, str) else ""
            raise TtsError(f"close_{ws.close_code}", f"server closed the connection {reason}".strip())


@dataclass
class Synthesis:
    pcm: bytes
    first_audio_s: float
    total_s: float

    @property
    def audio_s(self) -> float:
        return pcm_seconds(len(self.pcm))


async def synthesize(url: str, message: dict[str, Any], api_key: str | None = None,
                     timeout_s: float = 300.0) -> Synthesis:  # fmt: skip
    """One utterance over its own WebSocket."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.ws_connect(url, headers=auth_headers(api_key), max_msg_size=0) as ws:
            start = time.monotonic()
            first = None
            await ws.send_str(json.dumps(message))
            chunks = []
            async for chunk in utterance_chunks(ws):
                first = first if first is not None else time.monotonic() - start
                chunks.append(chunk)
            total = time.monotonic() - start
    return Synthesis(b"".join(chunks), first if first is not None else total, total)


def sampling_flags(parser: argparse.ArgumentParser) -> None:
    """--temperature, --top-p, ...: one flag per sampling field of the protocol (unset: the server's default)."""
    for name in SAMPLING_FIELDS:
        per_chunk = name in ("max_tokens", "min_tokens")
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name in INTEGER_SAMPLING_FIELDS else float,
                            help="per sentence chunk" if per_chunk else None)  # fmt: skip


def build_message(text: str, voice: str | None, args: argparse.Namespace) -> dict[str, Any]:
    message: dict[str, Any] = {"text": text}
    if voice:
        message["voice"] = voice
    for name in SAMPLING_FIELDS:
        if getattr(args, name, None) is not None:
            message[name] = getattr(args, name)
    return message


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--voice", default="tara")
    add_api_key_flag(parser)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds")
    sampling_flags(parser)


def say_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts say", description="Synthesize text into a WAV file")
    parser.add_argument("text")
    parser.add_argument("-o", "--output", default="out.wav")
    _common_flags(parser)
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(synthesize(args.url, build_message(args.text, args.voice, args), args.api_key,
                                        args.timeout))  # fmt: skip
    except (TtsError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        print(f"orpheus-tts say: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    path = write_wav(args.output, result.pcm)
    print(f"wrote {path}: {result.audio_s:.2f} s of audio, first audio after {result.first_audio_s:.3f} s, "
          f"done in {result.total_s:.2f} s")  # fmt: skip
    return 0


async def warmup(url: str, message: dict[str, Any], api_key: str | None, wait_s: float) -> Synthesis:
    """Retries while the server is not up or not ready (connection refused, 1013) until `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await synthesize(url, message, api_key)
        except (aiohttp.ClientConnectionError, TtsError) as e:
            retryable = not isinstance(e, TtsError) or e.code == "close_1013"
            if not retryable or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1.0)


def warmup_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts warmup", description="One short request, timed")
    parser.add_argument("--text", default="Hello, this is a warm-up.")
    parser.add_argument("--wait", type=float, default=0.0, help="keep retrying this long while not ready")
    _common_flags(parser)
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(warmup(args.url, build_message(args.text, args.voice, args), args.api_key, args.wait))
    except (TtsError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        print(f"orpheus-tts warmup: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"warm-up ok: first audio {result.first_audio_s:.3f} s, {result.audio_s:.2f} s of audio "
          f"in {result.total_s:.2f} s")  # fmt: skip
    return 0
