"""The HTTP routes: POST /v1/audio/speech (OpenAI-style, openai_compat.py), GET /healthz (process alive),
/readyz (model loaded and warmed, not draining), /metrics (Prometheus), and what the playground page asks of the
server (/playground/info.json, playground/__init__.py).

Every error is a JSON body `{"error": {"message", "type", "code"}}` with a status, the shape OpenAI's SDK reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from orpheus_tts.audio import SAMPLE_RATE
from orpheus_tts.protocol import BEARER_SUBPROTOCOL_PREFIX, END_OF_UTTERANCE, SUBPROTOCOL, WS_PATH, Problem, load_json
from orpheus_tts.serve.metrics import CONTENT_TYPE
from orpheus_tts.serve.openai_compat import FORMATS, StreamEncoder, parse_speech_body, resolve_voice
from orpheus_tts.serve.readiness import readiness_status
from orpheus_tts.serve.state import STATE, ServerState
from orpheus_tts.speech.synthesizer import SynthesisError, sampling_params
from orpheus_tts.speech.wav import wav_header

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


def json_error(status: int, code: str, message: str, kind: str = "invalid_request_error",
               headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status,
                             headers=headers)  # fmt: skip


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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    load_ready = not state.cfg.load_aware_readiness or state.load.ready  # issue #12: full -> new connections elsewhere
    status = readiness_status(draining=state.draining, loaded=state.ready, failed=bool(state.load_error),
                              load_ready=load_ready)  # fmt: skip
    if status in ("ready", "full"):
        body = {"status": status, "active_streams": state.active, "stream_limit": state.cfg.stream_limit}
        return web.json_response(body, status=200 if status == "ready" else 503)
    return web.json_response({"status": status}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def playground_info(state: ServerState) -> dict[str, Any] | None:
    """What the playground page needs from this server (None until the model is loaded); the protocol's
    constants come from protocol.py through here, so that the page has no copy of them."""
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
            "path": WS_PATH,
            "subprotocol": SUBPROTOCOL,
            "bearer_prefix": BEARER_SUBPROTOCOL_PREFIX,
            "end_of_utterance": END_OF_UTTERANCE.decode(),
        },
    }
