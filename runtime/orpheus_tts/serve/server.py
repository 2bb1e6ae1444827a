"""`orpheus-tts serve`: the HTTP/WebSocket front end (aiohttp).

Endpoints: WS /ws/tts (the seed's protocol, extended compatibly), POST /v1/audio/speech (OpenAI-style),
GET /healthz (process alive), /readyz (model loaded and warmed, not draining), /metrics (Prometheus),
GET /playground/ (the browser playground, playground.py; off with ORPHEUS_PLAYGROUND=0).

A "stream" is one WebSocket connection or one HTTP speech request: admission control counts those, so
an admitted client keeps its place for all the utterances it sends, but a socket with nothing queued or
playing for `ws_idle_timeout_s` is closed (1000, "idle timeout"): idle sockets cannot hold places. The
process listens before the model is loaded (liveness answers during a long load); /readyz turns 200 once
it can serve.

WebSocket protocol: each text message {"text", "voice"?, sampling fields?} is answered IN ORDER by
binary PCM messages (24 kHz mono s16le) then b"__END__". Bad messages get a JSON
{"type": "error", "code", "message"} in their turn and the socket stays open; {"type": "cancel"} stops
the current utterance and drops the queued ones, acknowledged by {"type": "cancelled"}. More than
`max_pending` queued messages: a `too_many_pending` error at once, then close 1008.
Browsers cannot set Authorization on a WebSocket: they offer the subprotocols "orpheus-tts.v1" and
"base64url.bearer.orpheus-tts.<base64url(key)>"; the server answers "orpheus-tts.v1" and never echoes the key.
Close codes: 1000 idle timeout, 1008 bad API key, unknown voice or too many pending, 1009 message >
max_message_bytes, 1013 busy / loading / draining (retry), 1011 internal or engine failure (after a JSON
error), 1001 server shutting down (also to sockets still busy when the drain grace is over).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import gc
import hmac
import json
import logging
import signal
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

from orpheus_tts.config import ConfigError, RuntimeConfig, add_cli_flags, from_args
from orpheus_tts.engine.interface import EngineError
from orpheus_tts.serve.loader import LoadedModel, LoadError
from orpheus_tts.serve.metrics import CONTENT_TYPE, Metrics
from orpheus_tts.serve.openai_compat import DEFAULT_FORMAT, FORMATS, StreamEncoder, resolve_voice
from orpheus_tts.serve.playground import add_playground_routes
from orpheus_tts.serve.readiness import LoadReadiness, watermarks  # issue #12
from orpheus_tts.speech.snac_batcher import SnacBatcher
from orpheus_tts.speech.snac_decoder import SnacLoadError, SnacModel
from orpheus_tts.speech.synthesizer import SAMPLING_FIELDS, SynthesisError, Synthesizer, sampling_params
from orpheus_tts.speech.wav import SAMPLE_RATE, wav_header

log = logging.getLogger(__name__)

END_OF_UTTERANCE = b"__END__"
RETRY_AFTER_S = 1
SECRET_FIELDS = ("hf_token", "api_key")
CLOSE_TIMEOUT_S = 5.0  # a close handshake a peer does not complete (it does not read) ends in an abort
CLOSE_NORMAL = WSCloseCode.OK  # 1000: idle timeout
CLOSE_BUSY = WSCloseCode.TRY_AGAIN_LATER  # 1013
CLOSE_POLICY = WSCloseCode.POLICY_VIOLATION  # 1008
CLOSE_INTERNAL = WSCloseCode.INTERNAL_ERROR  # 1011
CLOSE_GOING_AWAY = WSCloseCode.GOING_AWAY  # 1001
# Browser authentication (the Kubernetes API server's `base64url.bearer.authorization.k8s.io.<token>` pattern).
WS_SUBPROTOCOL = "orpheus-tts.v1"
BEARER_SUBPROTOCOL_PREFIX = "base64url.bearer.orpheus-tts."


# -- messages (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speak:
    text: str
    voice: str | None
    sampling: dict[str, Any]


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


def _show(value: Any) -> str:
    """A client's value in an error message: short strings quoted, anything else by type (a repr of a deeply
    nested or huge value is neither readable nor safe)."""
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return f"a {type(value).__name__}"


def load_json(data: str | bytes) -> Any:
    """json.loads for hostile input: too deep a nesting raises RecursionError, which is not a ValueError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def parse_message(data: str) -> Speak | Cancel | Problem:
    try:
        obj = load_json(data)
    except ValueError:
        return Problem("invalid_json", "message is not valid JSON")
    if not isinstance(obj, dict):
        return Problem("invalid_message", "message must be a JSON object")
    kind = obj.get("type", "speak")
    if kind == "cancel":
        return Cancel()
    if kind != "speak":
        return Problem("invalid_message", f"unknown message type {_show(kind)} (expected 'speak' or 'cancel')")
    text, voice = obj.get("text"), obj.get("voice")
    if not isinstance(text, str):
        return Problem("invalid_message", '"text" must be a string')
    if voice is not None and not isinstance(voice, str):
        return Problem("invalid_message", '"voice" must be a string')
    return Speak(text, voice, {k: obj[k] for k in SAMPLING_FIELDS if k in obj})


def error_message(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def offered_subprotocols(header: str) -> list[str]:
    return [p.strip() for p in header.split(",") if p.strip()]


def key_from_subprotocols(offered: list[str]) -> str | None:
    """The API key a browser sent as `base64url.bearer.orpheus-tts.<base64url(key), unpadded>`, if any."""
    for proto in offered:
        if proto.startswith(BEARER_SUBPROTOCOL_PREFIX):
            encoded = proto[len(BEARER_SUBPROTOCOL_PREFIX) :]
            try:
                raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
                return raw.decode()
            except (binascii.Error, ValueError):
                return None  # not a key: refused like a wrong one
    return None


# -- server state --------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    cfg: RuntimeConfig
    metrics: Metrics
    loaded: LoadedModel | None = None
    synth: Synthesizer | None = None
    batcher: SnacBatcher | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    active: int = 0
    sessions: set[WsSession] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    on_fatal: Callable[[], None] | None = None
    load: LoadReadiness = field(init=False)  # issue #12: not ready when full, again below the low watermark

    def __post_init__(self) -> None:
        self.load = LoadReadiness(watermarks(self.cfg.stream_limit))  # issue #12

    def admit(self) -> str | None:
        """Takes a stream place, or says why not ("draining", "loading", "busy")."""
        if self.draining:
            return "draining"
        if not self.ready:
            return "loading"
        if self.active >= self.cfg.stream_limit:
            return "busy"
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
LOAD_TASK = web.AppKey("load_task", asyncio.Task)
LAG_TASK = web.AppKey("loop_lag_task", asyncio.Task)


async def start_model(state: ServerState, loaded: LoadedModel | None, snac: SnacModel | None) -> None:
    """Loads (if not given) and warms up the engine and SNAC, then marks the server ready."""
    from orpheus_tts.serve.loader import load_engine
    from orpheus_tts.speech.snac_decoder import load_snac

    cfg = state.cfg
    if loaded is None:
        loaded = await asyncio.to_thread(load_engine, cfg)
    state.loaded = loaded
    await loaded.engine.start()
    if snac is None:
        snac = await asyncio.to_thread(load_snac, loaded.snac_source, cfg)
    await asyncio.to_thread(snac.warm_up)
    state.batcher = SnacBatcher(snac.decode_windows, lambda w: w.n_frames, cfg.snac_max_batch,
                                cfg.snac_batch_timeout_ms, on_call=state.metrics.snac_batch_size.observe)  # fmt: skip
    state.batcher.start()
    state.synth = Synthesizer(loaded.engine, loaded.spec, loaded.tokenizer, state.batcher, cfg, state.metrics)
    state.metrics.track_engine(loaded.engine)
    # The model, compiled kernels and graphs are millions of long-lived objects: out of the collector's
    # sight, a full collection no longer pauses every stream (one measured 10 ms mean event-loop lag
    # under load, docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    state.ready = True
    log.info("ready: %s, %d streams", loaded.description, cfg.stream_limit)


# -- WebSocket -----------------------------------------------------------------------------------------------


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
                await self.close(CLOSE_POLICY, b"too many pending messages")
                return
            if isinstance(job, Speak) and self.state.draining:
                job = Problem("draining", "the server is shutting down; reconnect")
            self.jobs.put_nowait(job)

    async def _work(self) -> None:
        try:
            while not self.ws.closed:
                if self.state.draining and self.jobs.empty():
                    await self.close(CLOSE_GOING_AWAY, b"server shutting down")
                    return
                idle_s = self.state.cfg.ws_idle_timeout_s
                try:
                    job = await asyncio.wait_for(self.jobs.get(), idle_s or None)
                except asyncio.TimeoutError:  # nothing queued, nothing playing: give the place back
                    await self.close(CLOSE_NORMAL, f"idle timeout: nothing sent for {idle_s:g} s".encode())
                    return
                if job is None:
                    continue
                self.current = asyncio.create_task(self._answer(job))
                await asyncio.wait([self.current])  # returns (without raising) also when a cancel stopped it
                task, self.current = self.current, None
                if not task.cancelled() and task.exception() is not None:
                    await self._internal_error(task.exception())
                    return
        finally:
            if self.current is not None:
                self.current.cancel()
                await asyncio.gather(self.current, return_exceptions=True)

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
        await self._send_json({"type": "cancelled"})
        if self.state.draining:
            self.jobs.put_nowait(None)

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
                await self.ws.close(code=CLOSE_POLICY, message=_reason(str(e)))
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
            await self.ws.close(code=CLOSE_INTERNAL, message=_reason(str(e)))

    async def _internal_error(self, exc: BaseException) -> None:
        """A bug, not bad input: log it, tell the client, close 1011; the server goes on."""
        log.error("WebSocket session failed", exc_info=exc)
        await self._error("internal", "internal server error")
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=CLOSE_INTERNAL, message=b"internal server error")

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
    if key_from_subprotocols(offered) is not None and WS_SUBPROTOCOL not in offered:
        # aiohttp would log the offered (unknown) subprotocols, key included: refuse before the handshake.
        return json_error(400, "invalid_subprotocol", f"offer the {WS_SUBPROTOCOL!r} subprotocol with the key")
    # Pings find dead peers (no FIN) so that their places free up.
    ws = web.WebSocketResponse(max_msg_size=state.cfg.max_message_bytes, heartbeat=state.cfg.ws_ping_interval_s,
                               compress=False, protocols=(WS_SUBPROTOCOL,))  # fmt: skip
    await ws.prepare(request)
    if not state.ws_authorized(request, offered):
        state.metrics.errors.labels("unauthorized").inc()
        await ws.close(code=CLOSE_POLICY, message=b"unauthorized: send Authorization: Bearer <api key>")
        return ws
    refusal = state.admit()
    if refusal is not None:
        state.metrics.rejected.labels(refusal).inc()
        await ws.close(code=CLOSE_BUSY, message=refusal.encode())
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


# -- HTTP ----------------------------------------------------------------------------------------------------


def json_error(status: int, code: str, message: str, kind: str = "invalid_request_error",
               headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status,
                             headers=headers)  # fmt: skip


def parse_speech_body(body: Any) -> tuple[str, str | None, str, dict[str, Any]] | Problem:
    """OpenAI's /v1/audio/speech body -> (text, voice, format, sampling) or the problem with it."""
    if not isinstance(body, dict):
        return Problem("invalid_request", "body must be a JSON object")
    text, voice = body.get("input"), body.get("voice")
    if not isinstance(text, str):
        return Problem("invalid_request", '"input" must be a string')
    if voice is not None and not isinstance(voice, str):
        return Problem("invalid_request", '"voice" must be a string')
    fmt = body.get("response_format", DEFAULT_FORMAT)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        return Problem("unsupported_format", f"response_format {_show(fmt)} is not supported: use one of "
                                             f"{', '.join(FORMATS)}")  # fmt: skip
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed != 1.0:
        return Problem("unsupported_speed", "only speed 1.0 is supported (Orpheus speaks at its own pace)")
    if body.get("stream_format", "audio") != "audio":
        return Problem("unsupported_stream_format", "only stream_format 'audio' is supported")
    return text, voice, fmt, {k: body[k] for k in SAMPLING_FIELDS if k in body}


async def speech(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not state.authorized(request):
        return json_error(401, "invalid_api_key", "send Authorization: Bearer <api key>", "authentication_error",
                          headers={"WWW-Authenticate": 'Bearer realm="orpheus-tts"'})  # fmt: skip
    try:
        async with asyncio.timeout(state.cfg.http_body_timeout_s):
            raw = await request.read()
        body = load_json(raw)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "too_large", f"body larger than {state.cfg.max_message_bytes} bytes")
    except TimeoutError:
        # The connection is closed after the answer (the rest of the body is waited for no longer either).
        return json_error(408, "body_timeout", f"the body did not arrive within {state.cfg.http_body_timeout_s:g} s")
    except ValueError:
        return json_error(400, "invalid_json", "body is not valid JSON")
    parsed = parse_speech_body(body)
    if isinstance(parsed, Problem):
        state.metrics.errors.labels(parsed.code).inc()
        return json_error(400, parsed.code, parsed.message)
    text, voice, fmt, sampling = parsed
    refusal = state.admit()
    if refusal is not None:
        state.metrics.rejected.labels(refusal).inc()
        return json_error(503, refusal, f"server {refusal}, retry later", "server_error",
                          headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    try:
        return await _stream_speech(request, state, text, voice, fmt, sampling)
    except Exception:  # a bug before any audio was sent: still a JSON answer
        log.exception("speech request failed")
        state.metrics.errors.labels("internal").inc()
        return json_error(500, "internal", "internal server error", "server_error")
    finally:
        state.release()


async def _stream_speech(request: web.Request, state: ServerState, text: str, voice: str | None, fmt: str,
                         sampling: dict[str, Any]) -> web.StreamResponse:  # fmt: skip
    synth = state.synth
    assert synth is not None
    try:
        params = sampling_params(state.cfg, sampling)
        prompts = synth.prompts(text, resolve_voice(voice, synth.spec.voices, synth.spec.default_voice))
    except SynthesisError as e:
        state.metrics.errors.labels(e.code).inc()
        return json_error(400, e.code, str(e))
    headers = {"Content-Type": FORMATS[fmt].content_type, "X-Sample-Rate": str(SAMPLE_RATE)}
    if fmt == "wav":
        # Whole, so that the header has the real sizes (a streamed WAV can only say "unknown", which readers
        # such as Python's `wave` take literally). Streamed uncompressed audio: `pcm`.
        chunks = []
        try:
            async with contextlib.aclosing(synth.stream(prompts, params)) as audio:
                async for chunk in audio:
                    if request.transport is None or request.transport.is_closing():
                        return web.Response(status=499)  # client gone: stop generating (nobody reads this)
                    chunks.append(chunk)
        except SynthesisError as e:
            log.warning("speech request failed: %s", e)
            state.metrics.errors.labels(e.code).inc()
            return json_error(500, e.code, str(e), "server_error")
        pcm = b"".join(chunks)
        return web.Response(body=wav_header(len(pcm)) + pcm, headers=headers)
    encoder = StreamEncoder(FORMATS[fmt]) if FORMATS[fmt].codec is not None else None
    resp = web.StreamResponse(headers=headers)
    try:
        await resp.prepare(request)
        async with contextlib.aclosing(synth.stream(prompts, params)) as audio:
            async for pcm in audio:
                # On the loop: ~1-4 % of real time per stream (aac the most), and never racing the close below.
                data = pcm if encoder is None else encoder.encode(pcm)
                if data:
                    await resp.write(data)
        if encoder is not None:
            data, encoder = encoder.finish(), None
            await resp.write(data)
        await resp.write_eof()
    except ConnectionError:
        pass  # client gone: leaving the loop closed the stream and freed the engine slot
    except Exception as e:
        # Headers are out; the only honest signal left is an incomplete (unterminated chunked) body.
        log.warning("speech request failed mid-stream: %s", e, exc_info=not isinstance(e, SynthesisError))
        state.metrics.errors.labels(getattr(e, "code", "internal")).inc()
        if request.transport is not None:
            request.transport.close()
    finally:
        if encoder is not None:
            encoder.close()
    return resp


# -- probes and app ------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        status = "draining"
    elif state.load_error:
        status = "failed"
    elif not state.ready:
        status = "loading"
    elif state.cfg.load_aware_readiness and not state.load.ready:  # issue #12: full -> new connections elsewhere
        return web.json_response({"status": "full", "active_streams": state.active,
                                  "stream_limit": state.cfg.stream_limit}, status=503)  # fmt: skip
    else:
        return web.json_response({"status": "ready", "active_streams": state.active,
                                  "stream_limit": state.cfg.stream_limit})  # fmt: skip
    return web.json_response({"status": status}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _playground_info(state: ServerState) -> dict[str, Any] | None:
    """What the playground page needs from this server (None until the model is loaded); the protocol's
    constants come from here so that the page has no copy of them."""
    if state.synth is None or not state.ready:
        return None
    spec, cfg = state.synth.spec, state.cfg
    return {
        "voices": list(spec.voices),
        "default_voice": spec.default_voice,
        "random_weights": spec.random_weights,
        "sample_rate": SAMPLE_RATE,
        "api_key_required": bool(cfg.api_key),
        "max_text_chars": cfg.max_text_chars,
        "sampling": {
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "repetition_penalty": cfg.repetition_penalty,
            "max_tokens": cfg.max_output_len,
        },
        "protocol": {
            "path": "/ws/tts",
            "subprotocol": WS_SUBPROTOCOL,
            "bearer_prefix": BEARER_SUBPROTOCOL_PREFIX,
            "end_of_utterance": END_OF_UTTERANCE.decode(),
        },
    }


async def watch_loop_lag(metrics: Metrics, period_s: float = 0.1) -> None:
    """How late the event loop runs a timer: every stream's bytes go through this loop, so its lag adds to
    every stream's latency (and shows when the host, not the GPU, is the bottleneck)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - t - period_s))


def create_app(cfg: RuntimeConfig, loaded: LoadedModel | None = None, *, snac: SnacModel | None = None,
               background_load: bool = False) -> web.Application:  # fmt: skip
    """`loaded`/`snac` None: loaded from cfg. `background_load`: serve probes while loading (`serve`);
    otherwise the app is ready when startup returns (tests)."""
    app = web.Application(client_max_size=cfg.max_message_bytes)
    state = ServerState(cfg, Metrics())
    state.idle.set()
    app[STATE] = state
    app.router.add_get("/ws/tts", ws_tts)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if cfg.playground:
        add_playground_routes(app, lambda: _playground_info(state))

    async def load() -> None:
        try:
            await start_model(state, loaded, snac)
        except Exception as e:
            state.load_error = str(e)
            # Load errors are written for users (what to fix); a traceback only for the unexpected.
            expected = (LoadError, SnacLoadError, EngineError, ConfigError, OSError)
            log.error("cannot serve: %s", e, exc_info=not isinstance(e, expected))
            if state.on_fatal is not None:
                state.on_fatal()
            if not background_load:
                raise

    async def on_startup(app: web.Application) -> None:
        app[LAG_TASK] = asyncio.create_task(watch_loop_lag(state.metrics), name="loop-lag")
        if background_load:
            app[LOAD_TASK] = asyncio.create_task(load(), name="load-model")
        else:
            await load()

    async def on_cleanup(app: web.Application) -> None:
        app[LAG_TASK].cancel()
        if LOAD_TASK in app:
            app[LOAD_TASK].cancel()
            await asyncio.gather(app[LOAD_TASK], return_exceptions=True)
        await asyncio.gather(*(s.close(CLOSE_GOING_AWAY, b"server shutting down") for s in list(state.sessions)))
        if state.batcher is not None:
            await state.batcher.close()
        if state.loaded is not None:
            await state.loaded.engine.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


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


async def drain(state: ServerState, grace_s: float) -> bool:
    """Refuse new streams at once, let the admitted ones finish; True if all did within the grace."""
    state.draining = True
    for session in list(state.sessions):
        session.jobs.put_nowait(None)  # idle sockets close now, busy ones after their queued utterances
    try:
        await asyncio.wait_for(state.idle.wait(), grace_s)
        return True
    except asyncio.TimeoutError:
        log.warning("drain: %d streams still active after %.0f s; closing them", state.active, grace_s)
    # Before the runner shuts the server down, which would drop them without a close frame (1006).
    await asyncio.gather(*(s.close(CLOSE_GOING_AWAY, b"server shutting down: drain grace over")
                           for s in list(state.sessions)))  # fmt: skip
    return False


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
