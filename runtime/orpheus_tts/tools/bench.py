"""`orpheus-tts bench`: N streams against a running server, C at a time, each on its own WebSocket (one
user each), timed as a listener would hear them.

Per stream: first-audio time (request sent -> first PCM bytes), real-time factor (request sent -> last
byte, over the audio's duration), and underruns: playback starts when the first bytes arrive and plays
continuously, so a chunk that arrives after everything before it has been played is a gap the listener
hears (counted, with the total silence). The same count with a jitter buffer (playback starting
`JITTER_BUFFER_S` after the first byte) is what a real player hears. `run_bench` is the reusable core (the GPU
ramp builds on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from orpheus_tts.audio import BYTES_PER_S, pcm_seconds
from orpheus_tts.tools import client
from orpheus_tts.tools.client import (
    DEFAULT_URL,
    TtsError,
    auth_headers,
    build_message,
    sampling_flags,
    utterance_chunks,
)

JITTER_BUFFER_S = 0.1  # a player that starts 100 ms after the first byte (the benchmark rule of issue #17)


@dataclass
class StreamResult:
    index: int
    ok: bool
    error: str | None = None
    first_audio_s: float | None = None
    total_s: float = 0.0
    audio_s: float = 0.0
    rtf: float | None = None
    underruns: int = 0
    stall_s: float = 0.0
    underruns_buffered: int = 0  # with playback starting JITTER_BUFFER_S after the first byte


def playback(arrivals: list[tuple[float, int]], delay_s: float = 0.0) -> tuple[int, float]:
    """(underruns, silence seconds) of chunks (arrival time, bytes) played back to back, starting `delay_s`
    after the first arrives (a player's jitter buffer)."""
    underruns, stall, play_end = 0, 0.0, None
    for t, size in arrivals:
        if play_end is not None and t > play_end:
            underruns += 1
            stall += t - play_end
        start = t + delay_s if play_end is None else max(t, play_end)
        play_end = start + size / BYTES_PER_S
    return underruns, stall


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class BenchResult:
    n: int
    concurrency: int
    wall_s: float
    streams: list[StreamResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.streams if s.ok]
        first = [s.first_audio_s for s in ok if s.first_audio_s is not None]
        rtf = [s.rtf for s in ok if s.rtf is not None]
        audio = sum(s.audio_s for s in ok)
        return {
            "n": self.n,
            "concurrency": self.concurrency,
            "ok": len(ok),
            "errors": len(self.streams) - len(ok),
            "wall_s": self.wall_s,
            "audio_s": audio,
            "audio_s_per_s": audio / self.wall_s if self.wall_s else 0.0,
            "first_audio_p50_s": _quantile(first, 0.5),
            "first_audio_p90_s": _quantile(first, 0.9),
            "first_audio_max_s": max(first, default=None),
            "rtf_mean": statistics.fmean(rtf) if rtf else None,
            "rtf_max": max(rtf, default=None),
            "streams_with_underruns": sum(1 for s in ok if s.underruns),
            "streams_with_underruns_100ms": sum(1 for s in ok if s.underruns_buffered),
            "underruns": sum(s.underruns for s in ok),
            "stall_s": sum(s.stall_s for s in ok),
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "streams": [asdict(s) for s in self.streams]}

    def table(self) -> str:
        def f(v: float | None, fmt: str = "{:.3f}") -> str:
            return "-" if v is None else fmt.format(v)

        lines = [f"{'#':>4} {'ok':>3} {'first_s':>8} {'rtf':>6} {'audio_s':>8} {'underruns':>9} {'stall_s':>8}  error"]
        for s in self.streams:
            lines.append(f"{s.index:>4} {'y' if s.ok else 'n':>3} {f(s.first_audio_s):>8} {f(s.rtf):>6} "
                         f"{s.audio_s:>8.2f} {s.underruns:>9} {s.stall_s:>8.3f}  {s.error or ''}")  # fmt: skip
        sm = self.summary()
        lines.append("")
        lines.append(f"streams {sm['ok']}/{sm['n']} ok at concurrency {sm['concurrency']}, wall {sm['wall_s']:.2f} s, "
                     f"{sm['audio_s_per_s']:.2f} s of audio per s")  # fmt: skip
        lines.append(f"first audio p50 {f(sm['first_audio_p50_s'])} s, p90 {f(sm['first_audio_p90_s'])} s, "
                     f"max {f(sm['first_audio_max_s'])} s")  # fmt: skip
        lines.append(f"rtf mean {f(sm['rtf_mean'])}, max {f(sm['rtf_max'])}; underruns {sm['underruns']} in "
                     f"{sm['streams_with_underruns']} streams ({sm['stall_s']:.3f} s of silence)")  # fmt: skip
        return "\n".join(lines)


async def run_stream(session: aiohttp.ClientSession, url: str, index: int, message: dict[str, Any],
                     api_key: str | None) -> StreamResult:  # fmt: skip
    result = StreamResult(index, ok=False)
    arrivals: list[tuple[float, int]] = []
    start = time.monotonic()
    try:
        async with session.ws_connect(url, headers=auth_headers(api_key), max_msg_size=0) as ws:
            start = time.monotonic()
            await ws.send_str(json.dumps(message))
            async for chunk in utterance_chunks(ws):
                arrivals.append((time.monotonic(), len(chunk)))
        result.ok = True
    except (TtsError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        result.error = f"{type(e).__name__}: {e}"
    result.total_s = time.monotonic() - start
    result.audio_s = pcm_seconds(sum(size for _, size in arrivals))
    if arrivals:
        result.first_audio_s = arrivals[0][0] - start
        result.underruns, result.stall_s = playback(arrivals)
        result.underruns_buffered = playback(arrivals, JITTER_BUFFER_S)[0]
    if result.audio_s > 0:
        result.rtf = result.total_s / result.audio_s
    return result


async def run_bench(url: str, n: int, concurrency: int, message: dict[str, Any], *, api_key: str | None = None,
                    timeout_s: float = 600.0, stagger_s: float = 0.0) -> BenchResult:  # fmt: skip
    """N streams of `message`, at most `concurrency` at once; failures (and streams over `timeout_s`) are
    recorded, never raised. `stagger_s`: stream i starts no earlier than i * stagger_s (users do not all
    arrive in the same millisecond; 0 is the worst case)."""
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=0)  # the semaphore limits; aiohttp's default pool (100) must not

    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> StreamResult:
            await asyncio.sleep(i * stagger_s)
            async with semaphore:
                try:
                    return await asyncio.wait_for(run_stream(session, url, i, message, api_key), timeout_s)
                except asyncio.TimeoutError:
                    return StreamResult(i, ok=False, error=f"timeout after {timeout_s:.0f} s", total_s=timeout_s)

        start = time.monotonic()
        streams = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - start
    return BenchResult(n, concurrency, wall, list(streams))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts bench", description="Concurrent WebSocket streams against a "
                                     "server: first audio, real-time factor, underruns")  # fmt: skip
    parser.add_argument("--n", type=int, default=8, help="streams in total")
    parser.add_argument("--concurrency", type=int, default=8, help="streams at once")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--text", default="Hello! This is a benchmark of streaming speech synthesis, one sentence "
                        "after another, for many listeners at once.")  # fmt: skip
    parser.add_argument("--voice", default="tara")
    client.add_api_key_flag(parser)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per stream")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between stream starts")
    parser.add_argument("--json", dest="json_path", help="also write the results as JSON here")
    sampling_flags(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1:
        parser.error("--n and --concurrency must be positive")
    message = build_message(args.text, args.voice, args)
    result = asyncio.run(run_bench(args.url, args.n, args.concurrency, message, api_key=args.api_key,
                                   timeout_s=args.timeout, stagger_s=args.stagger))  # fmt: skip
    print(result.table())
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    ok = all(s.ok for s in result.streams)
    if not ok:
        print("some streams failed", file=sys.stderr)
    return 0 if ok else 1
