"""WS /ws/tts: one WebSocket session per connection (protocol.py is the protocol; README.md, "WebSocket
protocol", the user's version).

A session is two tasks: the reader (the handler's task) parses messages and queues them, the worker answers
them in order, one utterance at a time, streaming the synthesizer's PCM as binary messages and then the end
marker. A cancel stops the current answer and drops the queue; too many queued messages, an unknown voice or a
failure close the socket with a code and a reason; the rest of the server goes on. A socket with nothing queued
or playing for `ws_idle_timeout_s` is closed (1000, "idle timeout"), so that idle sockets hold no places.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from orpheus_tts.protocol import (
    END_OF_UTTERANCE,
    SUBPROTOCOL,
    UNAUTHORIZED_REASON,
    Cancel,
    CloseCode,
    Problem,
    Speak,
    cancelled_message,
    error_message,
    key_from_subprotocols,
    offered_subprotocols,
    parse_message,
)
from orpheus_tts.serve.http import json_error
from orpheus_tts.serve.state import STATE, ServerState
from orpheus_tts.speech.synthesizer import SynthesisError, sampling_params

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # a close handshake a peer does not complete (it does not read) ends in an abort
SHUTTING_DOWN = b"server shutting down"


class WsSession:
    """One socket: a reader (this handler's task) queues jobs; a worker answers them in order."""

    def __init__(self, state: ServerState, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.state, self.ws, self.request = state, ws, request
        self.jobs: asyncio.Queue[Speak | Problem | None] = asyncio.Queue()  # None: wake up (drain)
        self.current: asyncio.Task | None = None

    async def run(self) -> None:
        worker = asyncio.create_task(self._work(), name="ws-worker")
        try:
            await self._read()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.TEXT:
                job = parse_message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                job = Problem("unexpected_binary", "send requests as JSON text messages, not binary")
            else:  # CLOSE / CLOSING / CLOSED / ERROR (aiohttp already closed a too-big message with 1009)
                return
            if isinstance(job, Cancel):
                await self._cancel()
                continue
            if self.jobs.qsize() >= self.state.cfg.max_pending:
                # Everything queued counts (errors too): a client that floods and never reads cannot grow us.
                # Told at once, not in turn: its queue is what is wrong.
                limit = self.state.cfg.max_pending
                await self._error("too_many_pending", f"more than {limit} queued messages; read the answers")
                await self.close(CloseCode.POLICY_VIOLATION, b"too many pending messages")
                return
            if isinstance(job, Speak) and self.state.draining:
                job = Problem("draining", "the server is shutting down; reconnect")
            self.jobs.put_nowait(job)

    async def _work(self) -> None:
        try:
            while not self.ws.closed:
                if self.state.draining and self.jobs.empty():
                    await self.close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
                    return
                idle_s = self.state.cfg.ws_idle_timeout_s
                try:
                    job = await asyncio.wait_for(self.jobs.get(), idle_s or None)
                except asyncio.TimeoutError:  # nothing queued, nothing playing: give the place back
                    await self.close(CloseCode.OK, f"idle timeout: nothing sent for {idle_s:g} s".encode())
                    return
                if job is None:
                    continue
                self.current = asyncio.create_task(self._answer(job))
                await asyncio.wait([self.current])  # returns (without raising) also when a cancel stopped it
                task, self.current = self.current, None
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    await self._internal_error(error)
                    return
        finally:
            if self.current is not None:
                self.current.cancel()
                await asyncio.gather(self.current, return_exceptions=True)

    def wake(self) -> None:
        """Makes the worker look again (a drain began): an idle socket closes at once."""
        self.jobs.put_nowait(None)

    async def close(self, code: int, reason: bytes) -> None:
        """Closes with a close frame; a peer that does not take it (it does not read) is cut off."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason), CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            if self.request.transport is not None:
                self.request.transport.abort()

    async def _cancel(self) -> None:
        while not self.jobs.empty():
            self.jobs.get_nowait()
        if self.current is not None:
            self.current.cancel()
            await asyncio.wait([self.current])
        # After the stopped utterance's last byte: the client may discard everything up to here.
        await self._send_json(cancelled_message())
        if self.state.draining:
            self.wake()

    async def _answer(self, job: Speak | Problem) -> None:
        try:
            if isinstance(job, Problem):
                await self._error(job.code, job.message)
            else:
                await self._speak(job)
        except ConnectionError:
            pass  # the peer is gone; the reader sees the close and ends the session

    async def _speak(self, job: Speak) -> None:
        synth = self.state.synth
        assert synth is not None
        try:
            params = sampling_params(self.state.cfg, job.sampling)
            prompts = synth.prompts(job.text, job.voice or synth.spec.default_voice)
        except SynthesisError as e:
            if e.code == "unknown_voice":
                self.state.metrics.errors.labels(e.code).inc()
                await self.ws.close(code=CloseCode.POLICY_VIOLATION, message=_reason(str(e)))
                return
            await self._error(e.code, str(e))
            return
        try:
            async with contextlib.aclosing(synth.stream(prompts, params)) as audio:
                async for pcm in audio:
                    await self.ws.send_bytes(pcm)
            await self.ws.send_bytes(END_OF_UTTERANCE)
        except SynthesisError as e:
            log.warning("utterance failed: %s", e)
            await self._error(e.code, str(e))
            await self.ws.close(code=CloseCode.INTERNAL_ERROR, message=_reason(str(e)))

    async def _internal_error(self, exc: BaseException) -> None:
        """A bug, not bad input: log it, tell the client, close 1011; the server goes on."""
        log.error("WebSocket session failed", exc_info=exc)
        await self._error("internal", "internal server error")
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=CloseCode.INTERNAL_ERROR, message=b"internal server error")

    async def _error(self, code: str, message: str) -> None:
        self.state.metrics.errors.labels(code).inc()
        await self._send_json(error_message(code, message))

    async def _send_json(self, obj: dict[str, Any]) -> None:
        # Bounded: a peer that does not read must not hold up the reader (over-queueing, cancel).
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.send_str(json.dumps(obj)), CLOSE_TIMEOUT_S)


def _reason(text: str) -> bytes:
    return text.encode()[:120]  # a close reason must fit in a control frame (123 bytes)


async def ws_tts(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    offered = offered_subprotocols(request.headers.get("Sec-WebSocket-Protocol", ""))
    if key_from_subprotocols(offered) is not None and SUBPROTOCOL not in offered:
        # aiohttp would log the offered (unknown) subprotocols, key included: refuse before the handshake.
        return json_error(400, "invalid_subprotocol", f"offer the {SUBPROTOCOL!r} subprotocol with the key")
    # Pings find dead peers (no FIN) so that their places free up.
    ws = web.WebSocketResponse(max_msg_size=state.cfg.max_message_bytes, heartbeat=state.cfg.ws_ping_interval_s,
                               compress=False, protocols=(SUBPROTOCOL,))  # fmt: skip
    await ws.prepare(request)
    if not state.ws_authorized(request, offered):
        state.metrics.errors.labels("unauthorized").inc()
        await ws.close(code=CloseCode.POLICY_VIOLATION, message=UNAUTHORIZED_REASON.encode())
        return ws
    refusal = state.admit()
    if refusal is not None:
        state.metrics.rejected.labels(refusal).inc()
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=refusal.encode())
        return ws
    session = WsSession(state, ws, request)
    state.sessions.add(session)
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        state.release()
        if not ws.closed:
            await ws.close()
    return ws


async def close_all(state: ServerState, reason: bytes = SHUTTING_DOWN) -> None:
    """Closes every open session with 1001 (server shutting down)."""
    await asyncio.gather(*(s.close(CloseCode.GOING_AWAY, reason) for s in list(state.sessions)))
