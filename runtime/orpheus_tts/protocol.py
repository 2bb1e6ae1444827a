"""The WebSocket protocol (/ws/tts): the one home of what the server (serve/ws.py), the clients (tools/client.py,
tools/bench.py), the synthesizer and the playground must agree on. Pure: no torch, no aiohttp, so that a client
on a laptop imports it for nothing.

Each text message {"text", "voice"?, sampling fields?} is answered IN ORDER by binary PCM messages (audio.py's
format: 24 kHz mono s16le) and then the binary END_OF_UTTERANCE. Bad messages get a JSON
{"type": "error", "code", "message"} in their turn and the socket stays open; {"type": "cancel"} stops the
current utterance and drops the queued ones, acknowledged by {"type": "cancelled"}. README.md, "WebSocket
protocol", is the user's version of this module. The playground (serve/playground/playground.js) cannot import
Python: it takes the subprotocols, path and end marker from /playground/info.json and keeps a copy of the close
codes and sampling fields that tests/runtime/test_protocol.py checks against this module.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass
from typing import Any

WS_PATH = "/ws/tts"
END_OF_UTTERANCE = b"__END__"  # the seed protocol's end marker: a binary message, after an utterance's audio

# Browsers cannot set Authorization on a WebSocket: they offer SUBPROTOCOL and BEARER_SUBPROTOCOL_PREFIX +
# base64url(key) without padding (the Kubernetes API server's `base64url.bearer.authorization.k8s.io.<token>`
# pattern); the server answers SUBPROTOCOL and never echoes the key.
SUBPROTOCOL = "orpheus-tts.v1"
BEARER_SUBPROTOCOL_PREFIX = "base64url.bearer.orpheus-tts."

# The request's sampling fields (WebSocket message and /v1/audio/speech body); engine/interface.py's
# SamplingParams has a field of each name. The integral ones are refused when given as a float.
SAMPLING_FIELDS = ("temperature", "top_p", "repetition_penalty", "max_tokens", "min_tokens", "seed")
INTEGER_SAMPLING_FIELDS = ("max_tokens", "min_tokens", "seed")


class CloseCode(enum.IntEnum):
    """The close codes the server sends and what they mean here (names as in RFC 6455 7.4.1 and aiohttp's
    WSCloseCode)."""

    OK = 1000  # idle timeout: nothing queued or playing for ORPHEUS_WS_IDLE_TIMEOUT_S
    GOING_AWAY = 1001  # server shutting down (a drain)
    POLICY_VIOLATION = 1008  # bad API key, unknown voice, too many pending messages
    MESSAGE_TOO_BIG = 1009  # a message over ORPHEUS_MAX_MESSAGE_BYTES (sent by aiohttp itself)
    INTERNAL_ERROR = 1011  # engine, decoder or internal failure, after a JSON error
    TRY_AGAIN_LATER = 1013  # busy, loading or draining: retry


# The reasons of a 1013 close (the playground words each one) and the start of an API-key refusal's reason.
BUSY, LOADING, DRAINING = "busy", "loading", "draining"
UNAUTHORIZED_REASON = "unauthorized: send Authorization: Bearer <api key>"


# -- messages ---------------------------------------------------------------------------------------------------


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
    """A request that is refused: `code` is a stable label for clients and metrics."""

    code: str
    message: str


def show(value: Any) -> str:
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


def sampling_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields a request carries (checked later, against the server's limits)."""
    return {k: obj[k] for k in SAMPLING_FIELDS if k in obj}


def parse_message(data: str) -> Speak | Cancel | Problem:
    """A client's text message."""
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
        return Problem("invalid_message", f"unknown message type {show(kind)} (expected 'speak' or 'cancel')")
    text, voice = obj.get("text"), obj.get("voice")
    if not isinstance(text, str):
        return Problem("invalid_message", '"text" must be a string')
    if voice is not None and not isinstance(voice, str):
        return Problem("invalid_message", '"voice" must be a string')
    return Speak(text, voice, sampling_fields(obj))


def error_message(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def cancelled_message() -> dict[str, str]:
    """The acknowledgement of a cancel, sent after the stopped utterance's last byte."""
    return {"type": "cancelled"}


# -- browser authentication ---------------------------------------------------------------------------------


def offered_subprotocols(header: str) -> list[str]:
    """The subprotocols in a Sec-WebSocket-Protocol header."""
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
