"""Memory under sustained concurrent load: a real `orpheus-tts serve` process (so that the CLI's allocator
settings apply, runtime/orpheus_tts/memory.py), rounds of 16 concurrent streams, RSS bounded.

With glibc's defaults RSS climbs by hundreds of MB over these rounds (measured here: 960 -> 1230-1450 MB after
4-5 rounds) and keeps climbing on longer runs; with the CLI's settings it stays within a few tens of MB of its
idle size. About 40 s of CPU."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from test_server import FRAME_BYTES
from test_server_drain import serve_process, wait_ready

ROUNDS = 5
STREAMS = 16
MAX_GROWTH_MB = 150


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_rss_stays_bounded_under_rounds_of_concurrent_streams(fast_model_dir, tmp_path):
    with serve_process(fast_model_dir, tmp_path, "--max-batch-size", str(STREAMS)) as (proc, port, _):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, proc)
        idle = rss_mb(proc.pid)

        async def stream(session: aiohttp.ClientSession, i: int) -> int:
            message = {"text": f"Stream {i} says hello there, how are you today.", "voice": "tara",
                       "max_tokens": 70, "min_tokens": 70}  # fmt: skip
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws/tts") as ws:
                await ws.send_str(json.dumps(message))
                received = 0
                while (msg := await ws.receive(timeout=120)).data != b"__END__":
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
                    received += len(msg.data)
                return received

        history = []
        async with aiohttp.ClientSession() as session:
            for _ in range(ROUNDS):
                sizes = await asyncio.gather(*(stream(session, i) for i in range(STREAMS)))
                assert all(size % FRAME_BYTES == 0 and size > 0 for size in sizes)
                history.append(round(rss_mb(proc.pid)))
        print(f"RSS idle {idle:.0f} MB, after each round: {history}")
        assert max(history) - idle < MAX_GROWTH_MB, (idle, history)
