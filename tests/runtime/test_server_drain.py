"""SIGTERM on a real `orpheus-tts serve` process: drain, finish in-flight streams, exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from test_server import FRAME_BYTES, read_answer, speak
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


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


@contextlib.contextmanager
def serve_process(model_dir, tmp_path, *flags: str, env: dict[str, str] | None = None):
    """`orpheus-tts serve` as a real process; yields (process, port, log path); killed if still running."""
    port = free_port()
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs", "--max-input-len", "24",
           "--max-output-len", "512", *flags]  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc, port, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            print(log_path.read_text())  # shown by pytest on failure


@pytest.fixture
def server_process(fast_model_dir, tmp_path):
    with serve_process(fast_model_dir, tmp_path, "--max-batch-size", "4", "--drain-grace-s", "60") as p:
        yield p


async def wait_exit(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    for _ in range(int(timeout * 10)):
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    return proc.poll()


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


async def test_past_the_grace_every_socket_is_closed_1001(fast_model_dir, tmp_path):
    """Streams still busy when the drain grace is over get a close frame (1001 and a reason), not a dropped
    connection (1006)."""
    with serve_process(fast_model_dir, tmp_path, "--drain-grace-s", "1") as (proc, port, log_path):
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        async with connect(f"ws://127.0.0.1:{port}/ws/tts", proxy=None, compression=None) as ws:
            for i in range(5):  # far more than a second of work
                await ws.send(speak(f"Busy {i}.", 511))
            assert isinstance(await asyncio.wait_for(ws.recv(), 60), bytes)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1001 and "drain grace" in ws.close_reason
        assert await wait_exit(proc) == 0
        assert "still active" in log_path.read_text()


async def test_a_model_that_cannot_load_exits_1_with_the_reason(tmp_path):
    """The reason is written for users (no traceback), and the process ends instead of serving nothing."""
    with serve_process(tmp_path, tmp_path) as (proc, _, log_path):  # an empty directory: no config.json
        assert await wait_exit(proc, 60) == 1
    log = log_path.read_text()
    assert "cannot serve:" in log and "has no config.json" in log and "Traceback" not in log
