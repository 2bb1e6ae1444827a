"""Load-aware readiness on a real server (issue #12): /readyz turns 503 "full" when every stream place is taken
and 200 again only once the load fell to the low watermark; liveness stays 200 throughout."""

from __future__ import annotations

import asyncio

import aiohttp
from test_server import assert_clean, running_server, server_cfg, ws_url

from orpheus_tts.serve.state import STATE


async def readyz(s: aiohttp.ClientSession, server) -> tuple[int, dict]:
    async with s.get(server.make_url("/readyz")) as r:
        return r.status, await r.json()


async def admitted(server, n: int) -> None:
    """Waits until the server holds exactly n stream places (a closed socket is released asynchronously)."""
    state = server.app[STATE]
    for _ in range(200):
        if state.active == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{state.active} streams admitted, expected {n}")


async def test_full_pod_is_not_ready_until_the_low_watermark(fast_model_dir):
    # 20 places: not ready at 20 admitted streams, ready again at 18 (10% lower), not at 19.
    async with running_server(server_cfg(fast_model_dir, max_streams=20, load_aware_readiness=True)) as server:
        async with aiohttp.ClientSession() as s:
            sockets = [await s.ws_connect(ws_url(server)) for _ in range(19)]
            assert (await readyz(s, server))[0] == 200
            sockets.append(await s.ws_connect(ws_url(server)))
            status, body = await readyz(s, server)
            assert (status, body) == (503, {"status": "full", "active_streams": 20, "stream_limit": 20})
            async with s.get(server.make_url("/healthz")) as r:
                assert r.status == 200  # liveness never depends on load
            await sockets.pop().close()
            await admitted(server, 19)
            assert (await readyz(s, server))[0] == 503  # 19: inside the band, still full (no flapping)
            await sockets.pop().close()
            await admitted(server, 18)
            assert (await readyz(s, server)) == (200, {"status": "ready", "active_streams": 18, "stream_limit": 20})
            for ws in sockets:
                await ws.close()
        await assert_clean(server)


async def test_without_load_aware_readiness_a_full_pod_stays_ready(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, max_streams=2)) as server:
        async with aiohttp.ClientSession() as s:
            sockets = [await s.ws_connect(ws_url(server)) for _ in range(2)]
            await admitted(server, 2)
            assert (await readyz(s, server))[0] == 200
            for ws in sockets:
                await ws.close()
        await assert_clean(server)
