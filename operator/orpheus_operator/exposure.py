"""How clients reach an OrpheusTTS: a Gateway API HTTPRoute, a controller-neutral Ingress, a NetworkPolicy.

Pure functions of the defaulted resource (see render.py), like render.py itself.

Streams and proxy timeouts. Proxies cut connections with two kinds of timers:
- idle timers (no bytes for N seconds). During an utterance audio flows several times a second, and between
  utterances the runtime pings every WebSocket every 30 s (server.HEARTBEAT_S), so any idle timeout of a
  minute or more is safe. The presets below set them to `ingress.websocketTimeoutSeconds` anyway.
- total request timers (a request may last N seconds in all). A WebSocket is one "request" that carries many
  utterances, so its rule disables the total timer ("0s" in Gateway API: "SHOULD disable the timeout
  completely"). A POST /v1/audio/speech lasts one utterance: its rule gets `utterance_timeout_seconds`, the
  longest synthesis the runtime's limits allow (derived below), so no proxy cuts an utterance short.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from orpheus_operator import crd, render

Body = dict[str, Any]

# ---- the runtime's limits an utterance's length follows from --------------------------------------------
# Contract with runtime/orpheus_tts (tests/operator/test_exposure.py ties each to its runtime home).
SAMPLE_RATE = 24_000  # orpheus_tts.audio.SAMPLE_RATE
SAMPLES_PER_FRAME = 2048  # orpheus_tts.audio.SAMPLES_PER_FRAME: one SNAC frame, 85.3 ms of audio
TOKENS_PER_FRAME = 7  # orpheus_tts.audio.CODES_PER_FRAME: 7 generated tokens make one frame
PROMPT_OVERHEAD = 6  # prompts.PROMPT_OVERHEAD: special tokens around a chunk's text
VOICE_PREFIX_TOKENS = 4  # "tara: " and the like, at most (the longest voice name plus ": ")
MAX_TEXT_CHARS = 8000  # config.RuntimeConfig.max_text_chars (ORPHEUS_MAX_TEXT_CHARS)
# Synthesis may run slower than real time before the RealTimeFactorAboveOne alert fires; a proxy timeout
# must not cut an utterance that is merely slow.
RTF_MARGIN = 2.0


def _runtime_env(spec: dict[str, Any], name: str) -> str | None:
    for item in spec["runtime"].get("env") or []:
        if item.get("name") == name and "value" in item:
            return str(item["value"])
    return None


def max_text_chars(spec: dict[str, Any]) -> int:
    """The runtime's text limit: ORPHEUS_MAX_TEXT_CHARS from spec.runtime.env, else its default."""
    raw = _runtime_env(spec, "ORPHEUS_MAX_TEXT_CHARS")
    try:
        return int(raw) if raw is not None else MAX_TEXT_CHARS
    except ValueError:
        return MAX_TEXT_CHARS  # the runtime refuses to start with it; its status says why


def utterance_timeout_seconds(spec: dict[str, Any]) -> int:
    """An upper bound of one utterance's synthesis time, from the engine's limits:
    - text is cut into chunks whose prompt fits maxInputLen: a chunk carries at least
      maxInputLen - PROMPT_OVERHEAD - VOICE_PREFIX_TOKENS text tokens' worth of text, one character per token
      or more for ordinary text (Llama 3 tokens average about four characters), so an utterance has at most
      ceil(max_text_chars / that) chunks;
    - each chunk generates at most maxOutputLen tokens = maxOutputLen / 7 frames of 2048 samples at 24 kHz;
    - synthesis at a real-time factor of up to RTF_MARGIN takes RTF_MARGIN times the audio's duration.
    Rounded up to a whole minute. Defaults: ceil(8000 / 38) = 211 chunks x 12.54 s x 2 -> 5340 s (89 min)."""
    engine = spec["engine"]
    text_room = max(1, engine["maxInputLen"] - PROMPT_OVERHEAD - VOICE_PREFIX_TOKENS)
    chunks = math.ceil(max_text_chars(spec) / text_room)
    chunk_audio_s = math.ceil(engine["maxOutputLen"] / TOKENS_PER_FRAME) * SAMPLES_PER_FRAME / SAMPLE_RATE
    return 60 * math.ceil(chunks * chunk_audio_s * RTF_MARGIN / 60)


def stream_timeout_seconds(spec: dict[str, Any]) -> int:
    """The proxy timeout an Ingress preset gets: the user's websocketTimeoutSeconds, never below one utterance."""
    return max(spec["ingress"]["websocketTimeoutSeconds"], utterance_timeout_seconds(spec))


# ---- Gateway API --------------------------------------------------------------------------------------

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
WEBSOCKET_PATH = "/ws/"  # the runtime's WebSocket endpoints (/ws/tts)


def _metadata(body: Body, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An owned child named like the resource, labelled as part of its runtime (render._metadata)."""
    return render._metadata(body, body["metadata"]["name"], crd.SERVER, annotations=dict(annotations or {}))


def _duration(seconds: int) -> str:
    return f"{seconds}s"  # Gateway API durations: digits and a unit, "0s" disables the timer


def render_httproute(body: Body) -> dict[str, Any] | None:
    """An HTTPRoute attached to the user's Gateway(s), or None when spec.gateway is off.

    Two rules, most specific first: WebSockets (/ws/) with the total timer disabled, then everything else
    (POST /v1/audio/speech) with the longest utterance as its total timeout. The WebSocket upgrade needs
    nothing in Gateway API: HTTP/1.1 Upgrade is forwarded by every conformant implementation."""
    spec = body["spec"]
    gateway = spec["gateway"]
    if not gateway["enabled"]:
        return None
    backend = [{"name": body["metadata"]["name"], "port": spec["service"]["port"]}]
    http_timeout = gateway.get("requestTimeoutSeconds")
    if http_timeout is None:
        http_timeout = utterance_timeout_seconds(spec)
    route_spec: dict[str, Any] = {
        "parentRefs": [copy.deepcopy(ref) for ref in gateway["parentRefs"]],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": WEBSOCKET_PATH}}],
                "backendRefs": copy.deepcopy(backend),
                "timeouts": {"request": "0s"},
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": copy.deepcopy(backend),
                "timeouts": {"request": _duration(http_timeout)},
            },
        ],
    }
    if gateway.get("hostnames"):
        route_spec["hostnames"] = list(gateway["hostnames"])
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _metadata(body, gateway.get("annotations")),
        "spec": route_spec,
    }


# ---- Ingress: one renderer, per-controller settings as data ------------------------------------------------


@dataclass(frozen=True)
class IngressPreset:
    """What one ingress controller needs for long WebSocket streams. "{timeout}" in a value becomes the
    stream timeout in seconds (stream_timeout_seconds). `notes` say what cannot be set per Ingress."""

    annotations: dict[str, str] = field(default_factory=dict)
    service_annotations: dict[str, str] = field(default_factory=dict)
    notes: str = ""


INGRESS_PRESETS: dict[str, IngressPreset] = {
    # No controller-specific annotation: the controller's own defaults apply (docs/deploy.md lists them).
    "none": IngressPreset(),
    # ingress-nginx and its compatible successors (the nginx.ingress.kubernetes.io/* annotation set).
    # WebSockets need no annotation; the read/send timeouts are per-read idle timers (default 60 s).
    "nginx": IngressPreset(
        annotations={
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "{timeout}",
            "nginx.ingress.kubernetes.io/proxy-send-timeout": "{timeout}",
            "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        }
    ),
    # Traefik: WebSockets work as is; its timeouts live on the entryPoint (static configuration), not on the
    # Ingress: respondingTimeouts.readTimeout (60 s by default in v3) must be 0 or >= the stream timeout.
    "traefik": IngressPreset(
        annotations={"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"},
        notes="set entryPoints.websecure.transport.respondingTimeouts.readTimeout=0 (and idleTimeout >= 180s)",
    ),
    # Envoy-based Ingress (Contour): the route's response timeout defaults to 15 s, which would cut speech.
    # Envoy Gateway itself implements only Gateway API: use spec.gateway with it.
    "contour": IngressPreset(
        annotations={
            "projectcontour.io/response-timeout": "infinity",
            "projectcontour.io/websocket-routes": "/",
        }
    ),
    # GKE Ingress: the backend service timeout (30 s by default) caps WebSockets too; it is set by a
    # BackendConfig that the Service names (cloud.google.com/backend-config), created by the user.
    # Set ingress.className: gce (or gce-internal).
    "gke": IngressPreset(
        service_annotations={"cloud.google.com/backend-config": '{"default": "{name}-backend"}'},
        notes="create BackendConfig {name}-backend with spec.timeoutSec: {timeout} (docs/deploy.md)",
    ),
    # AWS Load Balancer Controller (ALB): the idle timeout (60 s by default) is a load balancer attribute.
    "aws-alb": IngressPreset(
        annotations={
            "alb.ingress.kubernetes.io/target-type": "ip",
            "alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds={timeout}",
            "alb.ingress.kubernetes.io/healthcheck-path": "/readyz",
        }
    ),
}


def _fill(values: dict[str, str], name: str, timeout: int) -> dict[str, str]:
    return {k: v.replace("{timeout}", str(timeout)).replace("{name}", name) for k, v in values.items()}


def preset_annotations(body: Body) -> dict[str, str]:
    """The Ingress annotations of spec.ingress.preset, then the user's own (which win)."""
    ingress = body["spec"]["ingress"]
    preset = INGRESS_PRESETS[ingress["preset"]]
    filled = _fill(preset.annotations, body["metadata"]["name"], stream_timeout_seconds(body["spec"]))
    return {**filled, **(ingress.get("annotations") or {})}


def service_annotations(body: Body) -> dict[str, str]:
    """Annotations the Service needs for the Ingress preset (GKE's BackendConfig), then the user's."""
    spec = body["spec"]
    extra: dict[str, str] = {}
    if spec["ingress"]["enabled"]:
        preset = INGRESS_PRESETS[spec["ingress"]["preset"]]
        extra = _fill(preset.service_annotations, body["metadata"]["name"], stream_timeout_seconds(spec))
    return {**extra, **(spec["service"].get("annotations") or {})}


def render_ingress(body: Body) -> dict[str, Any] | None:
    """A networking.k8s.io/v1 Ingress for any controller; its controller-specific settings come from the
    preset."""
    spec = body["spec"]
    ingress = spec["ingress"]
    if not ingress["enabled"]:
        return None
    name = body["metadata"]["name"]
    ingress_spec: dict[str, Any] = {
        "rules": [
            {
                "host": ingress["host"],
                "http": {
                    "paths": [
                        {
                            "path": ingress["path"],
                            "pathType": "Prefix",
                            "backend": {"service": {"name": name, "port": {"name": "http"}}},
                        }
                    ]
                },
            }
        ],
    }
    if ingress.get("className"):
        ingress_spec["ingressClassName"] = ingress["className"]
    if ingress["tls"]["enabled"]:
        ingress_spec["tls"] = [
            {"hosts": [ingress["host"]], "secretName": ingress["tls"].get("secretName") or f"{name}-tls"}
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(body, preset_annotations(body)),
        "spec": ingress_spec,
    }


def endpoint(body: Body) -> str | None:
    """The external URL when a Gateway route with a hostname exposes the service (else render.endpoint's)."""
    gateway = body["spec"]["gateway"]
    if gateway["enabled"] and gateway.get("hostnames"):
        return f"https://{gateway['hostnames'][0]}/"
    return None


def selector(body: Body) -> str:
    """status.selector: the runtime pods' label selector as a string (the scale subresource's
    labelSelectorPath), so that `kubectl scale` and an HPA aimed at the OrpheusTTS itself can count pods."""
    return ",".join(f"{k}={v}" for k, v in sorted(render.selector_labels(body).items()))


# ---- NetworkPolicy --------------------------------------------------------------------------------------


def render_network_policy(body: Body) -> dict[str, Any] | None:
    """Only the listed peers (the gateway's or ingress controller's pods, Prometheus) reach the runtime
    pods, and only on their HTTP port; with no peers listed, only pods of the same namespace do.
    Egress is left open: the runtime needs DNS and nothing else, but a cluster's DNS differs."""
    spec = body["spec"]
    policy = spec["networkPolicy"]
    if not policy["enabled"]:
        return None
    peers = [copy.deepcopy(p) for p in policy.get("from") or []] or [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(body),
        "spec": {
            "podSelector": {"matchLabels": render.selector_labels(body)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": crd.HTTP_PORT}]}],
        },
    }
