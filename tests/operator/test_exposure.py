"""Exposure and scaling render functions (issue #12): HTTPRoute, controller-neutral Ingress presets,
NetworkPolicy, HPA behavior, KEDA ScaledObject; and the runtime limits the stream timeouts derive from."""

from __future__ import annotations

import math

import pytest
from crd_schema import make_body

from orpheus_operator import children, exposure, render, scaling

GATEWAY = {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}]}


def test_utterance_timeout_follows_the_engine_limits() -> None:
    spec = make_body()["spec"]
    chunks = math.ceil(8000 / (48 - 6 - 4))
    chunk_audio = math.ceil(1024 / 7) * 2048 / 24000
    assert exposure.utterance_timeout_seconds(spec) == 60 * math.ceil(chunks * chunk_audio * 2 / 60) == 5340
    longer = make_body({"engine": {"maxOutputLen": 2048}})["spec"]
    assert exposure.utterance_timeout_seconds(longer) > exposure.utterance_timeout_seconds(spec)
    wider = make_body({"engine": {"maxInputLen": 200}})["spec"]
    assert exposure.utterance_timeout_seconds(wider) < exposure.utterance_timeout_seconds(spec)
    more_text = make_body({"runtime": {"env": [{"name": "ORPHEUS_MAX_TEXT_CHARS", "value": "16000"}]}})["spec"]
    assert exposure.utterance_timeout_seconds(more_text) > exposure.utterance_timeout_seconds(spec)


def test_httproute_attaches_to_the_named_gateway_and_never_cuts_websockets() -> None:
    body = make_body({"gateway": {**GATEWAY, "hostnames": ["tts.example.com"]}, "service": {"port": 9000}})
    route = exposure.render_httproute(body)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    spec = route["spec"]
    assert spec["parentRefs"] == GATEWAY["parentRefs"]
    assert spec["hostnames"] == ["tts.example.com"]
    ws, rest = spec["rules"]
    assert ws["matches"] == [{"path": {"type": "PathPrefix", "value": "/ws/"}}]
    assert ws["timeouts"] == {"request": "0s"}  # one socket carries many utterances
    assert rest["timeouts"] == {"request": f"{exposure.utterance_timeout_seconds(body['spec'])}s"}
    for rule in (ws, rest):
        assert rule["backendRefs"] == [{"name": "voice", "port": 9000}]
    assert exposure.endpoint(body) == "https://tts.example.com/"


def test_httproute_timeout_override_and_off() -> None:
    body = make_body({"gateway": {**GATEWAY, "requestTimeoutSeconds": 0}})
    assert exposure.render_httproute(body)["spec"]["rules"][1]["timeouts"] == {"request": "0s"}
    assert "hostnames" not in exposure.render_httproute(body)["spec"]
    assert exposure.render_httproute(make_body()) is None
    assert exposure.endpoint(make_body()) is None


@pytest.mark.parametrize("preset", sorted(exposure.INGRESS_PRESETS))
def test_every_ingress_preset_renders_without_nginx_unless_asked(preset: str) -> None:
    body = make_body({"ingress": {"enabled": True, "host": "tts.example.com", "preset": preset}})
    ingress = exposure.render_ingress(body)
    annotations = ingress["metadata"].get("annotations", {})
    nginx = [k for k in annotations if k.startswith("nginx.ingress.kubernetes.io/")]
    assert bool(nginx) == (preset == "nginx")
    timeout = str(exposure.stream_timeout_seconds(body["spec"]))
    for value in annotations.values():
        assert "{" not in value or value.startswith('{"')  # placeholders filled
    if preset == "nginx":
        assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == timeout
    if preset == "aws-alb":
        assert (
            annotations["alb.ingress.kubernetes.io/load-balancer-attributes"]
            == f"idle_timeout.timeout_seconds={timeout}"
        )
    if preset == "contour":
        assert annotations["projectcontour.io/response-timeout"] == "infinity"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "tts.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": "voice", "port": {"name": "http"}}}


def test_stream_timeout_is_never_below_one_utterance() -> None:
    short = make_body({"ingress": {"enabled": True, "host": "h", "websocketTimeoutSeconds": 60}})["spec"]
    assert exposure.stream_timeout_seconds(short) == exposure.utterance_timeout_seconds(short)
    long = make_body({"ingress": {"enabled": True, "host": "h", "websocketTimeoutSeconds": 86400}})["spec"]
    assert exposure.stream_timeout_seconds(long) == 86400


def test_user_annotations_win_and_gke_points_the_service_at_a_backend_config() -> None:
    body = make_body(
        {
            "ingress": {
                "enabled": True,
                "host": "h",
                "preset": "gke",
                "className": "gce",
                "annotations": {"x/y": "z"},
            },
            "service": {"annotations": {"a": "b"}},
        }
    )
    ingress = exposure.render_ingress(body)
    assert ingress["metadata"]["annotations"] == {"x/y": "z"}
    assert ingress["spec"]["ingressClassName"] == "gce"
    assert exposure.service_annotations(body) == {
        "cloud.google.com/backend-config": '{"default": "voice-backend"}',
        "a": "b",
    }
    read_timeout = "nginx.ingress.kubernetes.io/proxy-read-timeout"
    ingress = {"enabled": True, "host": "h", "preset": "nginx", "annotations": {read_timeout: "7"}}
    nginx = make_body({"ingress": ingress})
    assert exposure.render_ingress(nginx)["metadata"]["annotations"][read_timeout] == "7"


def test_network_policy() -> None:
    assert exposure.render_network_policy(make_body()) is None
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}
    policy = exposure.render_network_policy(make_body({"networkPolicy": {"enabled": True, "from": [peer]}}))
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == render.selector_labels(make_body())
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{"from": [peer], "ports": [{"protocol": "TCP", "port": 8000}]}]
    same_ns = exposure.render_network_policy(make_body({"networkPolicy": {"enabled": True}}))
    assert same_ns["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


def test_hpa_scales_the_deployment_on_active_streams_per_pod() -> None:
    body = make_body(
        {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetActiveStreamsPerPod": 12}}
    )
    hpa = scaling.render_hpa(body)
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["name"] == "voice" and hpa["metadata"]["ownerReferences"][0]["kind"] == "OrpheusTTS"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "voice"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "orpheus_active_streams"},
                "target": {"type": "AverageValue", "averageValue": "12"},
            },
        }
    ]
    assert hpa["spec"]["behavior"] == scaling.behavior(body["spec"])


def test_ingress_class_tls_user_annotations_and_backend() -> None:
    ingress = {
        "enabled": True,
        "host": "tts.example.com",
        "className": "nginx",
        "preset": "nginx",
        "tls": {"enabled": True},
        "annotations": {"a": "b"},
    }
    body = make_body({"ingress": ingress})
    ing = exposure.render_ingress(body)
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["tts.example.com"], "secretName": "voice-tls"}]
    ann = ing["metadata"]["annotations"]
    timeout = str(exposure.stream_timeout_seconds(body["spec"]))
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == timeout and ann["a"] == "b"
    assert ing["spec"]["rules"][0]["http"]["paths"][0] == {
        "path": "/",
        "pathType": "Prefix",
        "backend": {"service": {"name": "voice", "port": {"name": "http"}}},
    }
    assert ing["metadata"]["labels"] == render.render_service(body)["metadata"]["labels"]
    assert exposure.render_ingress(make_body()) is None


def test_hpa_behavior_lets_draining_pods_finish() -> None:
    body = make_body({"autoscaling": {"enabled": True}, "runtime": {"drainGraceSeconds": 120}})
    hpa = scaling.render_hpa(body)
    down = hpa["spec"]["behavior"]["scaleDown"]
    drain = 5 + 120 + 15
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": drain}]
    assert down["stabilizationWindowSeconds"] == 300
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "orpheus_active_streams"
    # Long drains: the period is capped at the API's limit, and the window never shorter than a period.
    long = scaling.behavior(make_body({"runtime": {"drainGraceSeconds": 3600}})["spec"])
    assert long["scaleDown"]["policies"][0]["periodSeconds"] == 1800
    assert long["scaleDown"]["stabilizationWindowSeconds"] == 1800
    assert scaling.render_hpa(make_body()) is None


def test_keda_scaled_object_replaces_the_hpa() -> None:
    spec = {"autoscaling": {"enabled": True, "provider": "keda", "keda": {"prometheusAddress": "http://prom:9090"}}}
    body = make_body(spec)
    assert scaling.render_hpa(body) is None
    so = scaling.render_scaled_object(body)
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    assert so["spec"]["scaleTargetRef"]["name"] == "voice"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "16"
    assert 'orpheus_active_streams{namespace="tts",pod=~"voice-' in trigger["metadata"]["query"]
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == scaling.behavior(body["spec"])


def test_optional_children_cover_every_kind_once() -> None:
    kinds = [kind for _, kind, _ in children.optional_children(make_body())]
    assert kinds == ["Ingress", "HTTPRoute", "NetworkPolicy", "HorizontalPodAutoscaler", "ScaledObject"]
    assert all(obj is None for _, _, obj in children.optional_children(make_body()))


def test_status_selector_matches_the_deployment_selector() -> None:
    body = make_body()
    labels = render.selector_labels(body)
    assert exposure.selector(body) == ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
