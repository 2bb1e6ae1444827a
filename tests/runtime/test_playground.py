"""The playground's server side in-process: its routes, its info, and browser authentication by subprotocol
(tested with the `websockets` client, which sends subprotocols the way browsers do)."""

from __future__ import annotations

import base64
import logging

import aiohttp
import pytest
import websockets
from test_server import FRAME_BYTES, read_answer, running_server, server_cfg, speak, ws_url

from orpheus_tts.config import from_env
from orpheus_tts.protocol import BEARER_SUBPROTOCOL_PREFIX, SUBPROTOCOL, key_from_subprotocols, offered_subprotocols

KEY = "pl4yground-k3y/with+odd=chars"


def bearer(key: str) -> str:
    return BEARER_SUBPROTOCOL_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def test_key_from_subprotocols() -> None:
    for key in (KEY, "a", "ab", "abc", "ключ"):  # every padding length, and non-ASCII
        assert key_from_subprotocols([SUBPROTOCOL, bearer(key)]) == key
    assert key_from_subprotocols(offered_subprotocols(f" {SUBPROTOCOL} , {bearer(KEY)}")) == KEY
    assert key_from_subprotocols([SUBPROTOCOL]) is None
    assert key_from_subprotocols([BEARER_SUBPROTOCOL_PREFIX + "!!"]) is None
    assert key_from_subprotocols([BEARER_SUBPROTOCOL_PREFIX + "_w"]) is None  # bytes, but not UTF-8


def test_playground_switch_is_read_from_the_environment() -> None:
    assert from_env({}).playground is True
    assert from_env({"ORPHEUS_PLAYGROUND": "0"}).playground is False


async def test_browser_key_by_subprotocol(fast_model_dir, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(server_cfg(fast_model_dir, api_key=KEY)) as server:
        url = ws_url(server).replace("http", "ws")
        async with websockets.connect(url, subprotocols=[SUBPROTOCOL, bearer(KEY)]) as ws:
            assert ws.subprotocol == SUBPROTOCOL  # the key is never echoed
            assert KEY not in str(ws.response.headers) and bearer(KEY) not in str(ws.response.headers)
            await ws.send(speak())
            audio = b""
            while (msg := await ws.recv()) != b"__END__":
                audio += msg
            assert len(audio) == 2 * FRAME_BYTES

        for wrong in ("nope", KEY + "x", ""):
            async with websockets.connect(url, subprotocols=[SUBPROTOCOL, bearer(wrong)]) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason.startswith("unauthorized")

        # Only the key, without the protocol: refused before the handshake (aiohttp would log unknown offers).
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=[bearer(KEY)]):
                pass
        assert refused.value.response.status_code == 400

        # Non-browser clients keep using the header.
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(server), headers=headers,
                                                              protocols=(SUBPROTOCOL,)) as ws:  # fmt: skip
            assert ws.protocol == SUBPROTOCOL
            await ws.send_str(speak())
            assert len(await read_answer(ws)) == 2 * FRAME_BYTES
    # The server's own log (the client library logs its handshake at DEBUG: that is the client's business).
    server_log = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets")]
    assert any("/ws/tts" in line for line in server_log)  # access lines were logged, at DEBUG and up
    text = "\n".join(server_log)
    assert KEY not in text and base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=") not in text


async def test_page_routes_and_info(fast_model_dir) -> None:
    async with running_server(server_cfg(fast_model_dir, api_key=KEY)) as server:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/"), allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/playground/"
            async with s.get(server.make_url("/playground/")) as r:  # no key needed for the page itself
                assert r.status == 200 and r.content_type == "text/html"
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert 'src="playground.js"' in await r.text()
            async with s.get(server.make_url("/playground/playground.js")) as r:
                assert r.status == 200 and r.content_type == "text/javascript"
            async with s.get(server.make_url("/playground/..%2Fserver.py")) as r:
                assert r.status == 404
            async with s.get(server.make_url("/playground/info.json")) as r:
                info = await r.json()
    assert info["voices"][0] == info["default_voice"] == "tara"
    assert info["random_weights"] is True  # the tiny model: the page says its audio is noise
    assert info["api_key_required"] is True and KEY not in str(info)
    assert info["protocol"] == {"path": "/ws/tts", "subprotocol": SUBPROTOCOL,
                                "bearer_prefix": BEARER_SUBPROTOCOL_PREFIX, "end_of_utterance": "__END__"}  # fmt: skip
    assert info["sample_rate"] == 24000 and info["sampling"]["max_tokens"] == 512


async def test_playground_off(fast_model_dir) -> None:
    async with running_server(server_cfg(fast_model_dir, playground=False)) as server:
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/playground/", "/playground/info.json"):
                async with s.get(server.make_url(path), allow_redirects=False) as r:
                    assert r.status == 404
            async with s.ws_connect(ws_url(server)) as ws:  # the API is unaffected
                await ws.send_str(speak())
                assert len(await read_answer(ws)) == 2 * FRAME_BYTES
