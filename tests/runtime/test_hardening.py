"""Issue 13: a hostile or careless client against the server, over real sockets, with clients nobody here wrote
(`websockets`, the `openai` SDK, aiohttp, raw sockets). The tiny model's audio is noise: these tests check
lengths, formats, codes and that the server stays up, not how the audio sounds."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import wave

import aiohttp
import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import (
    FRAME_BYTES,
    assert_clean,
    running_server,
    server_cfg,
    speak,
    stalled_ws_client,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from orpheus_tts.config import ConfigError, RuntimeConfig, allocator_tuned_by_env, client_api_key, from_env
from orpheus_tts.memory import tune_malloc
from orpheus_tts.protocol import SAMPLING_FIELDS, Cancel, Problem, Speak, load_json, parse_message
from orpheus_tts.serve.openai_compat import parse_speech_body
from orpheus_tts.serve.state import STATE, key_matches
from orpheus_tts.speech.synthesizer import SynthesisError, sampling_params
from orpheus_tts.speech.wav import read_wav_info
from orpheus_tts.tools.client import say_main

DEEP = "[" * 60_000  # deeper than any recursion limit, smaller than the 64 KiB message limit


def ws_connect(url: str, **kwargs):
    return connect(url.replace("http://", "ws://"), proxy=None, compression=None, **kwargs)


async def recv_json(ws, timeout: float = 30.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, str):
            return json.loads(msg)


# -- 1. idle sockets cannot hold capacity ------------------------------------------------------------------


async def test_idle_sockets_are_closed_and_free_their_places(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, max_streams=2, ws_idle_timeout_s=1.0)) as server:
        url = ws_url(server)
        # Two clients take every place and send nothing (their library answers pings).
        idle = [await ws_connect(url).__aenter__() for _ in range(2)]
        async with ws_connect(url) as refused:
            await asyncio.wait_for(refused.wait_closed(), 10)
            assert refused.close_code == 1013
        for ws in idle:
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000 and "idle timeout" in ws.close_reason
        async with ws_connect(url) as ws:  # places free again: admitted, and a busy socket is not idle
            await ws.send(speak("Talk for a while.", 140))
            chunks = []
            while (data := await asyncio.wait_for(ws.recv(), 60)) != b"__END__":
                chunks.append(data)
            assert sum(map(len, chunks)) == 20 * FRAME_BYTES
            await asyncio.wait_for(ws.wait_closed(), 10)  # then idle again: closed
            assert ws.close_code == 1000
        await assert_clean(server)


# -- 2. hostile JSON -----------------------------------------------------------------------------------------


async def test_deeply_nested_json_gets_an_error_not_a_crash(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir)) as server:
        async with ws_connect(ws_url(server)) as ws:
            await ws.send(DEEP)
            await ws.send(json.dumps({"type": json.loads("[" * 500 + "]" * 500), "text": "x"}))
            assert (await recv_json(ws))["code"] == "invalid_json"
            assert (await recv_json(ws))["code"] == "invalid_message"
            await ws.send(speak())  # the socket goes on
            assert len(b"".join([m async for m in _until_end(ws)])) == 2 * FRAME_BYTES
        async with aiohttp.ClientSession() as s:
            url = server.make_url("/v1/audio/speech")
            async with s.post(url, data=DEEP, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and r.content_type == "application/json"
                assert (await r.json())["error"]["code"] == "invalid_json"
        await assert_clean(server)


async def _until_end(ws):
    while (data := await asyncio.wait_for(ws.recv(), 60)) != b"__END__":
        yield data


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)  # fmt: skip
FIELDS = ("type", "text", "voice", "input", "response_format", "speed", "stream_format", "seed", "temperature")
SPEAKISH = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, JSON))
DEEPISH = st.integers(1, 5000).map(lambda n: "[" * n) | st.integers(1, 5000).map(lambda n: '{"a":' * n)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), JSON.map(json.dumps), SPEAKISH.map(json.dumps), DEEPISH))
def test_parse_message_never_raises(data):
    assert isinstance(parse_message(data), (Speak, Cancel, Problem))


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, SPEAKISH))
def test_parse_speech_body_never_raises(body):
    result = parse_speech_body(body)
    assert isinstance(result, (Problem, tuple))


@settings(max_examples=100, deadline=None)
@given(st.binary() | st.integers(1, 100_000).map(lambda n: b"[" * n))
def test_load_json_raises_only_value_error(raw):
    try:
        load_json(raw)
    except ValueError:
        pass


# -- 3. one bound for everything queued on a socket --------------------------------------------------------


async def test_over_queueing_is_told_at_once_then_closed(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, max_pending=4)) as server:
        async with ws_connect(ws_url(server)) as ws:
            await ws.send(speak("Talk for a long time.", 511))
            for _ in range(10):
                await ws.send("{bad json")
            # Not after the utterance: before its end (the first message is still being answered).
            while isinstance(msg := await asyncio.wait_for(ws.recv(), 60), bytes):
                assert msg != b"__END__", "the error came only after the utterance"
            assert json.loads(msg)["code"] == "too_many_pending"
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1008 and "pending" in ws.close_reason
        await assert_clean(server)


async def test_flooding_client_that_never_reads_is_cut_off(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir)) as server:
        state = server.app[STATE]
        sock = await stalled_ws_client(server.port, "{bad json")
        loop = asyncio.get_running_loop()
        frame = bytes([0x81, 0x80 | 126]) + (60_000).to_bytes(2, "big") + b"\x00" * 4 + b"{" * 60_000  # mask 0
        try:
            for _ in range(300):  # ~18 MB of bad messages; the server's answers pile up unread
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, frame), 2)
                except (ConnectionError, asyncio.TimeoutError):
                    break
            for _ in range(300):
                if not state.sessions and state.active == 0:
                    break
                await asyncio.sleep(0.1)
            assert not state.sessions and state.active == 0, "the flooding socket still holds a place"
        finally:
            sock.close()
        await assert_clean(server)


# -- 6. OpenAI's SDK, its default-looking calls, every format -----------------------------------------------


def decode(data: bytes) -> tuple[int, int]:
    """(sample rate, samples) of an encoded file, decoded by FFmpeg (PyAV)."""
    with av.open(io.BytesIO(data)) as f:
        frames = list(f.decode(audio=0))
    return frames[0].sample_rate, sum(fr.samples for fr in frames)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm", None])
async def test_openai_sdk_every_format(fast_model_dir, fmt):
    from openai import AsyncOpenAI

    async with running_server(server_cfg(fast_model_dir)) as server:
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)
        extra = {} if fmt is None else {"response_format": fmt}
        length = {"max_tokens": 21, "min_tokens": 21}
        response = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello there.", extra_body=length, **extra
        )
        data = response.content
        samples = 3 * FRAME_BYTES // 2
        if fmt == "pcm":
            assert len(data) == 2 * samples
        elif fmt == "wav":
            with wave.open(io.BytesIO(data)) as w:  # the real sizes in the header
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24000, 1, 2, samples)
        else:  # mp3 is the default, as with OpenAI
            expected_type = {"mp3": "audio/mpeg", None: "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                             "flac": "audio/flac"}[fmt]  # fmt: skip
            assert response.response.headers["content-type"] == expected_type
            rate, n = decode(data)
            scale = rate // 24000  # Opus decodes at 48 kHz
            assert rate in (24000, 48000) and samples * scale <= n <= (samples + 2400) * scale  # + encoder delay
        await client.close()
        await assert_clean(server)


async def test_compressed_audio_is_streamed(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir)) as server:
        body = {"input": "Talk for a while.", "voice": "nova", "response_format": "mp3", "max_tokens": 511,
                "min_tokens": 511}  # fmt: skip
        async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/audio/speech"), json=body) as r:
            assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
            first = await asyncio.wait_for(r.content.readany(), 30)  # before the utterance is done
            assert first and server.app[STATE].loaded.engine.occupancy().active == 1
            data = first + await r.read()
        assert decode(data)[1] >= 73 * 2048
        await assert_clean(server)


# -- 7. the API key ------------------------------------------------------------------------------------------


def test_key_matches():
    assert key_matches("Bearer k", "k") and key_matches("bearer k", "k") and key_matches("BEARER  k ", "k")
    assert not any(key_matches(h, "k") for h in ("", "k", "Bearer", "Basic k", "Bearer kk", "Bearerk"))


async def test_api_key_handling(fast_model_dir, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with running_server(server_cfg(fast_model_dir, api_key="s3cret-key")) as server:
        async with ws_connect(ws_url(server), additional_headers={"Authorization": "bearer s3cret-key"}) as ws:
            await ws.send(speak())
            assert len(b"".join([m async for m in _until_end(ws)])) == 2 * FRAME_BYTES
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/audio/speech?api_key=s3cret-key"), json={"input": "Hi."},
                              headers={"Referer": "http://x/?api_key=s3cret-key"}) as r:  # fmt: skip
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        # The client commands take the key from the environment, not only from a flag (visible in `ps`).
        monkeypatch.setenv("ORPHEUS_API_KEY", "s3cret-key")
        out = tmp_path / "out.wav"
        args = ["Hello.", "-o", str(out), "--url", ws_url(server), "--max-tokens", "7", "--min-tokens", "7"]
        assert await asyncio.to_thread(say_main, args) == 0
        assert read_wav_info(out)[3] == 2048
        await assert_clean(server)
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/v1/audio/speech?api_key=REDACTED" in line for line in access), access
    assert "s3cret-key" not in caplog.text


# -- HTTP connections that never finish a request -----------------------------------------------------------


async def test_half_open_http_connections_time_out(fast_model_dir):
    cfg = server_cfg(fast_model_dir, http_idle_timeout_s=1.0, http_body_timeout_s=1.0)
    async with running_server(cfg) as server:

        async def after(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(data)
            try:
                return await asyncio.wait_for(reader.read(), 10)  # up to EOF: the server closed it
            finally:
                writer.close()

        silent, partial_head, partial_body = await asyncio.gather(
            after(b""), after(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n"),
            after(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"input\""))  # fmt: skip
        assert silent == b"" and partial_head == b""
        assert partial_body.startswith(b"HTTP/1.1 408") and b"body_timeout" in partial_body
        # A kept-alive connection is closed after its idle time too.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        await assert_clean(server)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SAMPLING_FIELDS), JSON | st.integers() | st.floats()))
def test_sampling_params_refuse_only_with_synthesis_error(values):
    cfg = RuntimeConfig()
    try:
        sampling_params(cfg, values)
    except SynthesisError as e:
        assert e.code == "invalid_params"


async def test_peers_that_do_not_answer_pings_are_dropped(fast_model_dir):
    cfg = server_cfg(fast_model_dir, ws_idle_timeout_s=0, ws_ping_interval_s=1.0)  # no idle timeout: pings only
    async with running_server(cfg) as server:
        state = server.app[STATE]
        sock = await stalled_ws_client(server.port, "{bad json")  # never reads, so never answers a ping
        try:
            for _ in range(100):
                if state.sessions:
                    break
                await asyncio.sleep(0.05)
            assert state.active == 1
            for _ in range(100):  # a ping every second, half a second to answer
                if state.active == 0:
                    break
                await asyncio.sleep(0.1)
            assert state.active == 0 and not state.sessions
        finally:
            sock.close()
        await assert_clean(server)


# -- configuration and the allocator ------------------------------------------------------------------------


def test_new_limits_are_configured_from_the_environment():
    env = {"ORPHEUS_WS_IDLE_TIMEOUT_S": "0", "ORPHEUS_WS_PING_INTERVAL_S": "2.5", "ORPHEUS_MAX_PENDING": "8",
           "ORPHEUS_HTTP_IDLE_TIMEOUT_S": "5", "ORPHEUS_HTTP_BODY_TIMEOUT_S": "3"}  # fmt: skip
    cfg = from_env(env)
    assert (cfg.ws_idle_timeout_s, cfg.ws_ping_interval_s, cfg.max_pending) == (0.0, 2.5, 8)
    assert (cfg.http_idle_timeout_s, cfg.http_body_timeout_s) == (5.0, 3.0)
    bad_values = [
        ("ORPHEUS_MAX_PENDING", "0"),
        ("ORPHEUS_WS_IDLE_TIMEOUT_S", "-1"),
        ("ORPHEUS_HTTP_BODY_TIMEOUT_S", "0"),
    ]
    for name, value in bad_values:
        with pytest.raises(ConfigError):
            from_env({name: value})
    assert client_api_key({"ORPHEUS_API_KEY": "k"}) == "k" and client_api_key({}) is None


def test_allocator_settings_yield_to_the_users_own():
    assert not allocator_tuned_by_env({"PATH": "/bin"})
    for env in ({"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"},
                {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}):  # fmt: skip
        assert allocator_tuned_by_env(env)
    assert tune_malloc()  # glibc here: every mallopt accepted
