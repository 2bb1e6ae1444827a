"""`orpheus-tts serve`: the HTTP/WebSocket server (aiohttp), run until SIGTERM, then drained.

The parts: app.py (the application and its lifecycle), ws.py (WS /ws/tts, protocol.py's protocol), http.py
(POST /v1/audio/speech, /healthz, /readyz, /metrics), state.py (admission, what the handlers share), the
playground (GET /playground/, off with ORPHEUS_PLAYGROUND=0). docs/architecture.md has a request's way through.

SIGTERM (or SIGINT) drains: new streams are refused (1013 / 503, /readyz 503), the admitted ones finish within
ORPHEUS_DRAIN_GRACE_S, sockets still busy then are closed with 1001; then the process exits 0. A model that
cannot be loaded ends the process with 1, once its error is logged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

from aiohttp import web

from orpheus_tts.config import ConfigError, RuntimeConfig, add_cli_flags, from_args
from orpheus_tts.serve.app import create_app, drain, runner_options
from orpheus_tts.serve.state import STATE

log = logging.getLogger(__name__)

SECRET_FIELDS = ("hf_token", "api_key")


async def serve(cfg: RuntimeConfig) -> int:
    sys.setswitchinterval(cfg.gil_switch_interval_ms / 1000)
    app = create_app(cfg, background_load=True)
    state = app[STATE]
    stop = asyncio.Event()
    state.on_fatal = stop.set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, **runner_options(cfg))
    await runner.setup()
    await web.TCPSite(runner, cfg.host, cfg.port).start()
    log.info("listening on %s:%d", cfg.host, cfg.port)
    await stop.wait()
    if state.load_error is None:
        log.info("draining: up to %.0f s for %d active streams", cfg.drain_grace_s, state.active)
        await drain(state, cfg.drain_grace_s)
    await runner.cleanup()
    return 1 if state.load_error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts serve", description="Serve Orpheus TTS over HTTP/WebSocket")
    # Secrets come from the environment only (HF_TOKEN, ORPHEUS_API_KEY): a flag would show them in `ps`.
    add_cli_flags(parser, [f.name for f in dataclasses.fields(RuntimeConfig) if f.name not in SECRET_FIELDS])
    args = parser.parse_args(argv)
    try:
        cfg = from_args(args)
    except ConfigError as e:
        print(f"orpheus-tts serve: {e}", flush=True)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(cfg))
