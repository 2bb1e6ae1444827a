"""The server in-process on real sockets, with the tiny model on CPU.

Also the home of the helpers other server-side tests import (fast model dir, config, running server)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import pathlib
import re
import socket
import struct
import wave

import aiohttp
import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestServer

from orpheus_tts.audio import BYTES_PER_FRAME, SAMPLES_PER_FRAME
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import EngineError
from orpheus_tts.serve.app import create_app, runner_options
from orpheus_tts.serve.loader import load_engine
from orpheus_tts.serve.openai_compat import parse_speech_body
from orpheus_tts.serve.state import STATE
from orpheus_tts.speech.audio_codes import frames_from_ids
from orpheus_tts.speech.snac_decoder import SnacModel, disable_noise, to_pcm16

END = b"__END__"
FRAME_BYTES = BYTES_PER_FRAME


def server_cfg(model_dir: pathlib.Path, **overrides) -> RuntimeConfig:
    values = dict(model=str(model_dir), device="cpu", snac_device="cpu", cuda_graphs=False, max_input_len=24,
                  max_output_len=512, max_batch_size=16, snac_batch_timeout_ms=2.0, drain_grace_s=20.0)  # fmt: skip
    return RuntimeConfig(**{**values, **overrides})


class RecordingEngine:
    """Wraps the real engine; keeps every generated id per request (to check audio against them).
    `fail_after`: raise EngineError once a request has that many ids (a failing engine)."""

    def __init__(self, engine, fail_after: int | None = None) -> None:
        self.engine, self.ids, self.fail_after = engine, {}, fail_after

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, request):
        stream = self.engine.submit(request)
        ids = self.ids.setdefault(request.request_id, [])

        async def run():
            try:
                async for new in stream:
                    ids.extend(new)
                    if self.fail_after is not None and len(ids) >= self.fail_after:
                        raise EngineError("injected failure", "test")
                    yield new
            finally:
                await stream.aclose()

        return run()


@contextlib.asynccontextmanager
async def running_server(cfg: RuntimeConfig, snac: SnacModel | None = None, wrap=None):
    """An in-process server on a real socket; `wrap(engine)` may replace the engine (recording, failing)."""
    loaded = load_engine(cfg)
    if wrap is not None:
        loaded.engine = wrap(loaded.engine)
    server = TestServer(create_app(cfg, loaded, snac=snac), host="127.0.0.1")
    await server.start_server(**runner_options(cfg))
    try:
        yield server
    finally:
        await server.close()


def ws_url(server: TestServer) -> str:
    return str(server.make_url("/ws/tts"))


async def assert_clean(server: TestServer, timeout: float = 10.0, streams: int = 0) -> None:
    """Still up, every engine slot free, every stream place free but `streams` (sockets still open)."""
    state = server.app[STATE]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        occupancy = state.loaded.engine.occupancy()
        if state.active == streams and occupancy.active == 0 and occupancy.queued == 0:
            break
        assert asyncio.get_running_loop().time() < deadline, (state.active, occupancy)
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/readyz")) as r:
        assert r.status == 200


async def read_answer(ws) -> bytes | dict:
    """Binary chunks up to __END__ (-> bytes) or a JSON message (-> dict)."""
    chunks = []
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.BINARY:
            if msg.data == END:
                return b"".join(chunks)
            chunks.append(msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            assert not chunks, "a JSON message in the middle of audio"
            return json.loads(msg.data)
        else:
            raise AssertionError(f"socket closed: {msg.type} {ws.close_code}")


def speak(text: str = "Hello world.", tokens: int = 14, **extra) -> str:
    """A message whose answer has a known length: min_tokens == max_tokens -> tokens // 7 frames per chunk."""
    return json.dumps({"text": text, "voice": "tara", "max_tokens": tokens, "min_tokens": tokens, **extra})


@pytest.fixture
async def server(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir), wrap=RecordingEngine) as s:
        yield s


# -- pure parsing (the WebSocket message: test_protocol.py) ----------------------------------------


def test_parse_speech_body():
    assert parse_speech_body({"input": "hi", "model": "x", "speed": 1}) == ("hi", None, "mp3", {})
    for body, code in [({"input": "hi", "speed": 1.5}, "unsupported_speed"),
                       ({"input": "hi", "response_format": "ogg"}, "unsupported_format"),
                       ({"input": "hi", "response_format": [[]]}, "unsupported_format"),
                       ({"input": "hi", "stream_format": "sse"}, "unsupported_stream_format"),
                       ({"voice": "tara"}, "invalid_request"), ([], "invalid_request")]:  # fmt: skip
        assert parse_speech_body(body).code == code


# -- streaming -------------------------------------------------------------------------------------------


async def test_16_concurrent_streams_answer_in_order(server):
    async def client(i: int):
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
            # Three utterances sent at once; their lengths (2, 3, 1 frames) prove the order of the answers.
            for tokens in (14, 21, 7):
                await ws.send_str(speak(f"Stream {i} says hello.", tokens, seed=i))
            return [await read_answer(ws) for _ in range(3)]

    answers = await asyncio.gather(*(client(i) for i in range(16)))
    for a in answers:
        assert [len(x) for x in a] == [2 * FRAME_BYTES, 3 * FRAME_BYTES, 1 * FRAME_BYTES]
    await assert_clean(server)


async def test_ws_audio_equals_offline_decode(fast_model_dir):
    from snac import SNAC

    torch.manual_seed(0)
    snac = SnacModel(disable_noise(SNAC.from_pretrained(str(fast_model_dir / "snac"))), torch.device("cpu"))
    async with running_server(server_cfg(fast_model_dir), snac=snac, wrap=RecordingEngine) as server:
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
            text = "It was the best of times, it was the worst of times. She sells sea shells by the sea shore."
            await ws.send_str(speak(text, 63, seed=5))
            audio = np.frombuffer(await read_answer(ws), np.int16)
        ids = server.app[STATE].loaded.engine.ids
        frames = [f for rid in sorted(ids) for f in frames_from_ids(ids[rid])]
    assert len(ids) >= 2 and len(frames) == 9 * len(ids)  # several sentence chunks, joined
    offline = to_pcm16(snac.decode_frames([tuple(frames)]))[0].numpy()
    assert audio.size == offline.size == len(frames) * SAMPLES_PER_FRAME
    err = np.sum((audio.astype(float) - offline) ** 2)
    assert 10 * np.log10(np.sum(offline.astype(float) ** 2) / max(err, 1e-9)) >= 40


async def test_http_speech_wav_and_pcm(server):
    async with aiohttp.ClientSession() as s:
        body = {"model": "orpheus", "input": "Hello there.", "voice": "leo", "max_tokens": 21, "min_tokens": 21}
        async with s.post(server.make_url("/v1/audio/speech"), json={**body, "response_format": "wav"}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "audio/wav"
            data = await r.read()
        async with s.post(server.make_url("/v1/audio/speech"), json={**body, "response_format": "pcm"}) as r:
            assert r.headers["Content-Type"] == "audio/pcm"
            assert len(await r.read()) == 3 * FRAME_BYTES
    with wave.open(io.BytesIO(data)) as w:  # a whole file: the header has the real sizes
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24000, 1, 2, 3 * 2048)
    assert len(data) == 44 + 3 * FRAME_BYTES
    await assert_clean(server)


async def test_http_errors_are_json(server):
    url = server.make_url("/v1/audio/speech")
    async with aiohttp.ClientSession() as s:
        for body, status, code in [({"input": "hi", "speed": 2}, 400, "unsupported_speed"),
                                   ({"input": "hi", "voice": "nobody"}, 400, "unknown_voice"),
                                   ({"input": " "}, 400, "empty_text"),
                                   ({"input": "hi", "temperature": 9}, 400, "invalid_params"),
                                   ("x" * 70_000, 413, "too_large")]:  # fmt: skip
            async with s.post(url, json=body) as r:
                assert r.status == status
                err = (await r.json())["error"]
                assert err["code"] == code and err["message"] and err["type"]
        async with s.post(url, data=b"{nope") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    await assert_clean(server)


async def test_probes_and_metrics(server):
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/healthz")) as r:
            assert r.status == 200
        async with s.ws_connect(ws_url(server)) as ws:
            await ws.send_str(speak())
            await read_answer(ws)
        async with s.get(server.make_url("/metrics")) as r:
            text = await r.text()
    for name in ("orpheus_active_streams", "orpheus_engine_queued_requests", "orpheus_first_audio_seconds_count 1.0",
                 "orpheus_real_time_factor_count 1.0", "orpheus_generated_tokens_total 14.0",
                 "orpheus_snac_batch_size_count", "orpheus_errors_total", "orpheus_first_token_seconds_count 1.0",
                 "orpheus_event_loop_lag_seconds_count", "orpheus_engine_decode_gpu_seconds_total 0.0"):  # fmt: skip
        assert name in text
    # The engine loop counted its steps (one prefill + 13 decodes for 14 tokens, maybe split by a cancel check).
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(orpheus_engine_\w+) (\S+)$", text, re.M)}
    assert values["orpheus_engine_steps_total"] >= 14 and values["orpheus_engine_step_seconds_total"] > 0


# -- bad input: every case leaves the server up with every slot free --------------------------------------


async def test_bad_messages_get_json_errors_and_socket_stays_open(server):
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
        await ws.send_str("{not json")
        await ws.send_bytes(b"\x00\x01binary")
        await ws.send_str(json.dumps({"text": "   ", "voice": "tara"}))
        await ws.send_str(json.dumps({"text": "Hi.", "temperature": "hot"}))
        await ws.send_str(json.dumps(["text"]))
        await ws.send_str(speak())
        answers = [await read_answer(ws) for _ in range(6)]
    codes = [a["code"] for a in answers[:5]]
    assert codes == ["invalid_json", "unexpected_binary", "empty_text", "invalid_params", "invalid_message"]
    assert all(a["type"] == "error" and a["message"] for a in answers[:5])
    assert len(answers[5]) == 2 * FRAME_BYTES
    await assert_clean(server)


async def test_message_too_big_closes_1009(server):
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
        await ws.send_str(json.dumps({"text": "a" * 1_000_000, "voice": "tara"}))
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1009
    await assert_clean(server)


async def test_unknown_voice_closes_1008_after_earlier_answers(server):
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
        await ws.send_str(speak())
        await ws.send_str(json.dumps({"text": "Hello.", "voice": "nobody"}))
        assert len(await read_answer(ws)) == 2 * FRAME_BYTES
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
        assert "nobody" in msg.extra
    await assert_clean(server)


async def test_client_disconnect_mid_stream_frees_the_slot(server):
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(ws_url(server))
        await ws.send_str(speak("Talk for a long time.", 511))
        while (await ws.receive(timeout=30)).type != aiohttp.WSMsgType.BINARY:
            pass
        ws._response.connection.transport.abort()  # vanish without a close handshake
    await assert_clean(server)
    generated = [len(v) for v in server.app[STATE].loaded.engine.ids.values()]
    assert len(generated) == 1 and generated[0] < 511  # stopped early, not run to the end


async def test_cancel_stops_the_utterance_and_the_socket_goes_on(server):
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
        await ws.send_str(speak("Talk for a long time.", 511))
        await ws.send_str(speak("Queued, to be dropped.", 511))
        assert (await ws.receive(timeout=30)).type == aiohttp.WSMsgType.BINARY
        await ws.send_str(json.dumps({"type": "cancel"}))
        while (msg := await ws.receive(timeout=30)).type == aiohttp.WSMsgType.BINARY:
            assert msg.data != END  # the cancelled utterance does not end normally
        assert json.loads(msg.data) == {"type": "cancelled"}
        await assert_clean(server, streams=1)
        await ws.send_str(speak())
        assert len(await read_answer(ws)) == 2 * FRAME_BYTES
    assert len(server.app[STATE].loaded.engine.ids) == 2  # the queued one never reached the engine
    await assert_clean(server)


async def stalled_ws_client(port: int, message: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that sends one message and never reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (f"GET /ws/tts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101")
    payload, mask = message.encode(), os.urandom(4)
    header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload))
    await loop.sock_sendall(sock, header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


async def test_slow_reader_does_not_stall_others(server):
    state = server.app[STATE]
    sock = await stalled_ws_client(server.port, speak("A long answer nobody reads.", 511))
    try:
        for _ in range(100):  # the handler registers the session just after the 101 went out
            if state.sessions:
                break
            await asyncio.sleep(0.01)
        (session,) = state.sessions
        # A small server-side send buffer too, so the ~300 KB answer certainly cannot all sit in kernel buffers.
        server_sock = session.ws._req.transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        async def client(i: int) -> int:
            async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
                await ws.send_str(speak(f"Reader {i}.", 21))
                return len(await read_answer(ws))

        assert await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(3))), 60) == [3 * FRAME_BYTES] * 3
        # The engine finishes the slow reader's request too: generation never waits on a socket.
        engine = state.loaded.engine
        for _ in range(1200):
            if engine.occupancy().active == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.occupancy().active == 0, engine.occupancy()
        assert sorted(len(v) for v in engine.ids.values())[-1] == 511
        assert state.active == 1  # its socket is still open, holding only its stream place
        assert session.current is not None and not session.current.done(), "the answer should still be sending"
    finally:
        sock.close()
    await assert_clean(server)


async def test_over_capacity_is_refused_and_admitted_streams_complete(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, max_streams=2)) as server:
        async with aiohttp.ClientSession() as s:
            admitted = [await s.ws_connect(ws_url(server)) for _ in range(2)]
            for ws in admitted:
                await ws.send_str(speak("Hold on.", 63))
            extra = await s.ws_connect(ws_url(server))
            msg = await extra.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and extra.close_code == 1013
            async with s.post(server.make_url("/v1/audio/speech"), json={"input": "Hi."}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["code"] == "busy"
            assert [len(await read_answer(ws)) for ws in admitted] == [9 * FRAME_BYTES] * 2
            for ws in admitted:
                await ws.close()
        await assert_clean(server)


async def test_api_key(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, api_key="s3cret")) as server:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(ws_url(server))
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
            async with s.post(server.make_url("/v1/audio/speech"), json={"input": "Hi."}) as r:
                assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
            async with s.ws_connect(ws_url(server), headers={"Authorization": "Bearer s3cret"}) as ws:
                await ws.send_str(speak())
                assert len(await read_answer(ws)) == 2 * FRAME_BYTES
        await assert_clean(server)


async def test_engine_failure_sends_error_then_closes_1011(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir), wrap=lambda e: RecordingEngine(e, fail_after=30)) as server:
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
            await ws.send_str(speak("Hello.", 63))
            while (msg := await ws.receive(timeout=30)).type == aiohttp.WSMsgType.BINARY:
                pass
            assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["code"] == "engine"
            msg = await ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
        await assert_clean(server)


@pytest.mark.parametrize("fmt", ["pcm", "mp3", "wav"])
async def test_http_client_disconnect_frees_the_slot(server, fmt):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps({"input": "Talk for a long time.", "max_tokens": 511, "min_tokens": 511,
                       "response_format": fmt}).encode()  # fmt: skip
    writer.write(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    engine = server.app[STATE].loaded.engine
    if fmt == "wav":  # sent whole at the end: leave once generation is under way
        for _ in range(600):
            if any(len(v) > 20 for v in list(engine.ids.values())):
                break
            await asyncio.sleep(0.05)
    else:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(2000)  # some audio arrived
    writer.transport.abort()
    await assert_clean(server)
    assert max(len(v) for v in engine.ids.values()) < 511


class BrokenEngine(RecordingEngine):
    """An engine with a bug (not an EngineError): the server must survive it."""

    def submit(self, request):
        raise RuntimeError("a bug")


async def test_internal_error_closes_1011_and_the_server_goes_on(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir), wrap=BrokenEngine) as server:
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server)) as ws:
            await ws.send_str(speak())
            assert await read_answer(ws) == {"type": "error", "code": "internal", "message": "internal server error"}
            msg = await ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
        await assert_clean(server)


async def test_a_failed_startup_stops_what_it_had_started(fast_model_dir):
    """The model's lifecycle (app.py's cleanup_ctx): SNAC failing after the engine started stops the engine, and
    the app's startup fails with SNAC's error."""
    cfg = server_cfg(fast_model_dir)
    loaded = load_engine(cfg)
    engine_close, closed = loaded.engine.close, []

    async def close() -> None:
        closed.append("engine")
        await engine_close()

    loaded.engine.close = close

    class BrokenSnac:
        def warm_up(self) -> None:
            raise OSError("no SNAC weights here")

    server = TestServer(create_app(cfg, loaded, snac=BrokenSnac()), host="127.0.0.1")
    with pytest.raises(OSError, match="no SNAC weights here"):
        await server.start_server(**runner_options(cfg))
    assert closed == ["engine"]
    assert server.app[STATE].load_error == "no SNAC weights here" and not server.app[STATE].ready
    await server.close()
    assert closed == ["engine"]  # once
