"""The aiohttp application: its routes (ws.py, http.py, the playground) and its lifecycle.

The lifecycle is aiohttp's `cleanup_ctx`: each part starts before its `yield` and stops after it, in reverse
order. The model (engine, SNAC, batcher) is loaded in the background for `serve`, so that the process listens
(and answers liveness) during a long load; /readyz turns 200 once it can serve. On shutdown the open sockets
are closed (1001) before the batcher and the engine stop. `drain` is the graceful part that comes first
(server.py): refuse new streams, let the admitted ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from orpheus_tts.config import ConfigError, RuntimeConfig
from orpheus_tts.engine.interface import EngineError
from orpheus_tts.protocol import WS_PATH
from orpheus_tts.serve import http, ws
from orpheus_tts.serve.loader import LoadedModel, LoadError
from orpheus_tts.serve.metrics import Metrics
from orpheus_tts.serve.playground import add_playground_routes
from orpheus_tts.serve.state import STATE, ServerState
from orpheus_tts.speech.snac_batcher import SnacBatcher
from orpheus_tts.speech.snac_decoder import SnacLoadError, SnacModel
from orpheus_tts.speech.synthesizer import Synthesizer

log = logging.getLogger(__name__)

# Load errors written for users (what to fix): logged without a traceback.
EXPECTED_LOAD_ERRORS = (LoadError, SnacLoadError, EngineError, ConfigError, OSError)


def create_app(cfg: RuntimeConfig, loaded: LoadedModel | None = None, *, snac: SnacModel | None = None,
               background_load: bool = False) -> web.Application:  # fmt: skip
    """`loaded`/`snac` None: loaded from cfg. `background_load`: serve probes while loading (`serve`);
    otherwise the app is ready when startup returns (tests)."""
    app = web.Application(client_max_size=cfg.max_message_bytes)
    state = ServerState(cfg, Metrics())
    app[STATE] = state
    app.router.add_get(WS_PATH, ws.ws_tts)
    app.router.add_post("/v1/audio/speech", http.speech)
    app.router.add_get("/healthz", http.healthz)
    app.router.add_get("/readyz", http.readyz)
    app.router.add_get("/metrics", http.metrics)
    if cfg.playground:
        add_playground_routes(app, lambda: http.playground_info(state))
    app.cleanup_ctx.append(watching_loop_lag)
    app.cleanup_ctx.append(serving_model(loaded, snac, background_load))
    return app


async def watching_loop_lag(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(watch_loop_lag(app[STATE].metrics), name="loop-lag")
    yield
    task.cancel()


async def watch_loop_lag(metrics: Metrics, period_s: float = 0.1) -> None:
    """How late the event loop runs a timer: every stream's bytes go through this loop, so its lag adds to
    every stream's latency (and shows when the host, not the GPU, is the bottleneck)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - t - period_s))


def serving_model(loaded: LoadedModel | None, snac: SnacModel | None,
                  background: bool) -> Callable[[web.Application], AsyncIterator[None]]:  # fmt: skip
    """The model's part of the lifecycle: loaded (in a task if `background`), used, then stopped."""

    async def serving(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        # What load_model starts, it registers here: on the way out (or when loading fails) each is stopped.
        async with contextlib.AsyncExitStack() as started:
            loading = asyncio.create_task(load_or_fail(state, started, loaded, snac), name="load-model")
            if not background:
                await loading  # a failure fails the app's startup
            yield
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await ws.close_all(state)  # before the engine stops under them

    return serving


async def load_or_fail(state: ServerState, started: contextlib.AsyncExitStack, loaded: LoadedModel | None,
                       snac: SnacModel | None) -> None:  # fmt: skip
    """load_model; a failure is recorded (/readyz says "failed"), logged, and stops `serve` (state.on_fatal)."""
    try:
        await load_model(state, started, loaded, snac)
    except Exception as e:
        state.load_error = str(e)
        log.error("cannot serve: %s", e, exc_info=not isinstance(e, EXPECTED_LOAD_ERRORS))
        state.on_fatal()
        raise


async def load_model(state: ServerState, started: contextlib.AsyncExitStack, loaded: LoadedModel | None,
                     snac: SnacModel | None) -> None:  # fmt: skip
    """Loads (if not given) and warms up the engine and SNAC, then marks the server ready."""
    from orpheus_tts.serve.loader import load_engine
    from orpheus_tts.speech.snac_decoder import load_snac

    cfg = state.cfg
    if loaded is None:
        loaded = await asyncio.to_thread(load_engine, cfg)
    state.loaded = loaded
    started.push_async_callback(loaded.engine.close)
    await loaded.engine.start()
    if snac is None:
        snac = await asyncio.to_thread(load_snac, loaded.snac_source, cfg)
    await asyncio.to_thread(snac.warm_up)
    batcher = SnacBatcher(snac.decode_windows, lambda w: w.n_frames, cfg.snac_max_batch, cfg.snac_batch_timeout_ms,
                          on_call=state.metrics.snac_batch_size.observe, order=cfg.snac_order)  # fmt: skip
    started.push_async_callback(batcher.close)
    batcher.start()
    state.synth = Synthesizer(loaded.engine, loaded.spec, loaded.tokenizer, batcher, cfg, state.metrics)
    state.metrics.track_engine(loaded.engine)
    # The model, compiled kernels and graphs are millions of long-lived objects: out of the collector's
    # sight, a full collection no longer pauses every stream (one measured 10 ms mean event-loop lag
    # under load, docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    state.ready = True
    log.info("ready: %s, %d streams", loaded.description, cfg.stream_limit)


async def drain(state: ServerState, grace_s: float) -> bool:
    """Refuse new streams at once, let the admitted ones finish; True if all did within the grace."""
    state.draining = True
    for session in list(state.sessions):
        session.wake()  # idle sockets close now, busy ones after their queued utterances
    try:
        await asyncio.wait_for(state.idle.wait(), grace_s)
        return True
    except asyncio.TimeoutError:
        log.warning("drain: %d streams still active after %.0f s; closing them", state.active, grace_s)
    # Before the runner shuts the server down, which would drop them without a close frame (1006).
    await ws.close_all(state, b"server shutting down: drain grace over")
    return False


# -- the runner's settings -----------------------------------------------------------------------------------


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log line without secrets: query values whose name says key or token are redacted (a
    key sent as `?api_key=` must not land in the log), and no Referer (it may carry such a URL too)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', request.remote, request.method,
                         redact_url(request.rel_url), request.version.major, request.version.minor,
                         response.status, response.body_length, time,
                         request.headers.get("User-Agent", "-"))  # fmt: skip


def redact_url(url: Any) -> str:
    """path?query with the values of key/token-like parameters replaced."""
    query = [(k, "REDACTED" if ("key" in k.lower() or "token" in k.lower()) else v) for k, v in url.query.items()]
    return url.path + ("?" + urllib.parse.urlencode(query) if query else "")


def runner_options(cfg: RuntimeConfig) -> dict[str, Any]:
    """The AppRunner's (or TestServer's) settings: connection timeouts and the access log."""
    # keepalive_timeout also closes a new connection that sends no complete request headers in time (aiohttp
    # arms it at connection start); aiohttp's own default is an hour.
    # lingering_time: how long the rest of a body no handler read is waited for (aiohttp's default is 10 s).
    return {"keepalive_timeout": cfg.http_idle_timeout_s, "lingering_time": cfg.http_body_timeout_s,
            "access_log_class": AccessLogger}  # fmt: skip
