"""What the request handlers share (`app[STATE]`): admission to stream places, the readiness flags, the loaded
model, the open WebSocket sessions, and the API-key checks.

A "stream" is one WebSocket connection or one HTTP speech request: admission control counts those, so an
admitted client keeps its place for all the utterances it sends (ws.py closes a socket idle for
`ws_idle_timeout_s`: idle sockets cannot hold places).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.protocol import BUSY, DRAINING, LOADING, key_from_subprotocols
from orpheus_tts.serve.loader import LoadedModel
from orpheus_tts.serve.metrics import Metrics
from orpheus_tts.serve.readiness import LoadReadiness, watermarks  # issue #12
from orpheus_tts.speech.synthesizer import Synthesizer

if TYPE_CHECKING:
    from orpheus_tts.serve.ws import WsSession


def _nothing() -> None:
    pass


@dataclass
class ServerState:
    cfg: RuntimeConfig
    metrics: Metrics
    loaded: LoadedModel | None = None  # set once loaded (app.py), before it is ready
    synth: Synthesizer | None = None  # set when ready: handlers use it only once admitted
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    active: int = 0
    sessions: set[WsSession] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no stream is active
    on_fatal: Callable[[], None] = _nothing  # the model cannot be loaded (`serve` stops)
    load: LoadReadiness = field(init=False)  # issue #12: not ready when full, again below the low watermark

    def __post_init__(self) -> None:
        self.load = LoadReadiness(watermarks(self.cfg.stream_limit))  # issue #12
        self.idle.set()

    def admit(self) -> str | None:
        """Takes a stream place, or says why not (DRAINING, LOADING, BUSY: a 1013 close's reason)."""
        if self.draining:
            return DRAINING
        if not self.ready:
            return LOADING
        if self.active >= self.cfg.stream_limit:
            return BUSY
        self.active += 1
        self.idle.clear()
        self.metrics.active_streams.set(self.active)
        self.load.update(self.active)  # issue #12: load-aware readiness
        return None

    def release(self) -> None:
        self.active -= 1
        self.metrics.active_streams.set(self.active)
        self.load.update(self.active)  # issue #12
        if self.active == 0:
            self.idle.set()

    def authorized(self, request: web.Request) -> bool:
        if not self.cfg.api_key:
            return True
        return key_matches(request.headers.get("Authorization", ""), self.cfg.api_key)

    def ws_authorized(self, request: web.Request, offered: list[str]) -> bool:
        """The Authorization header, or (browsers) the key in a subprotocol."""
        if self.authorized(request):
            return True
        key = key_from_subprotocols(offered)
        return key is not None and hmac.compare_digest(key.encode(), (self.cfg.api_key or "").encode())


def key_matches(authorization: str, api_key: str) -> bool:
    """`Authorization: Bearer <key>`; the scheme is case-insensitive (RFC 9110 11.1)."""
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


STATE = web.AppKey("state", ServerState)
