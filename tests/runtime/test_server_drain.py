"""SIGTERM on a real `orpheus-tts serve` process: drain, finish in-flight streams, exit 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from test_server import FRAME_BYTES, make_fast_model_dir, read_answer, speak


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir, tmp_path_factory):
    return make_fast_model_dir(tiny_model_dir, tmp_path_factory.mktemp("fast") / "model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited during startup"
            try:
                async with s.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("server not ready in time")


@pytest.fixture
def server_process(fast_model_dir, tmp_path):
    """`orpheus-tts serve` as a real process; yields (process, port, log path); killed if still running."""
    port = free_port()
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(fast_model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs", "--max-input-len", "24",
           "--max-output-len", "512", "--max-batch-size", "4", "--drain-grace-s", "60"]  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc, port, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            print(log_path.read_text())  # shown by pytest on failure


async def test_sigterm_drains_in_flight_streams_then_exits_0(server_process):
    proc, port, log_path = server_process
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, proc)
    async with aiohttp.ClientSession() as s:
        streams = [await s.ws_connect(f"{base.replace('http', 'ws')}/ws/tts") for _ in range(2)]
        for ws in streams:
            await ws.send_str(speak("Finish me.", 511))
        firsts = [await ws.receive(timeout=60) for ws in streams]
        assert all(m.type == aiohttp.WSMsgType.BINARY for m in firsts)

        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while True:  # /readyz fails at once
            async with s.get(f"{base}/readyz") as r:
                if r.status == 503:
                    assert (await r.json())["status"] == "draining"
                    break
            assert time.monotonic() - t0 < 2.0
            await asyncio.sleep(0.02)
        late = await s.ws_connect(f"{base.replace('http', 'ws')}/ws/tts")
        msg = await late.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and late.close_code == 1013
        async with s.post(f"{base}/v1/audio/speech", json={"input": "Hi."}) as r:
            assert r.status == 503 and r.headers["Retry-After"]

        rest = [await read_answer(ws) for ws in streams]
        for first, tail in zip(firsts, rest, strict=True):
            assert len(first.data) + len(tail) == 73 * FRAME_BYTES  # every frame of 511 tokens
        for ws in streams:  # then the server closes the socket: going away
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001  # (the server may be gone before our reply)
    for _ in range(300):
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert proc.poll() == 0
    assert "draining" in log_path.read_text()
