"""Issue #12 against the real API server: every optional child the operator renders is accepted (dry run,
strict field validation) with the Gateway API and KEDA CRDs installed from their pinned Go modules; the CRD's
new rules reject what they should; `kubectl scale` works on an OrpheusTTS (the scale subresource)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from chart.support import server_dry_run_create
from crd_schema import make_body
from k8s import third_party_crds as third_party
from kubernetes import client
from kubernetes.client.rest import ApiException
from operator_harness import install_crd

from orpheus_operator import children, crd, exposure

pytestmark = pytest.mark.k8s

GATEWAY_CRDS = [
    "gateway.networking.k8s.io_gatewayclasses.yaml",
    "gateway.networking.k8s.io_gateways.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
]
PARENT = {"name": "public", "namespace": "gateways", "sectionName": "https"}


@pytest.fixture(scope="module")
def crds(kube) -> None:
    with kube.api_client() as api:
        docs = third_party.crd_documents(third_party.GATEWAY_API, *GATEWAY_CRDS)
        docs += third_party.crd_documents(third_party.KEDA, "keda.sh_scaledobjects.yaml")
        third_party.install(api, docs)
        install_crd(api)


EVERYTHING = [
    {
        "gateway": {"enabled": True, "parentRefs": [PARENT], "hostnames": ["tts.example.com"]},
        "ingress": {"enabled": True, "host": "tts.example.com", "preset": preset, "tls": {"enabled": True}},
        "networkPolicy": {
            "enabled": True,
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}],
        },
        "autoscaling": {"enabled": True, "provider": provider, "keda": {"prometheusAddress": "http://prom:9090"}},
        "runtime": {"drainGraceSeconds": grace},
    }
    for preset, provider, grace in [
        ("nginx", "hpa", 30),
        ("traefik", "keda", 3600),
        ("contour", "hpa", 0),
        ("gke", "keda", 600),
        ("aws-alb", "hpa", 120),
        ("none", "keda", 30),
    ]
]


@pytest.mark.parametrize("spec", EVERYTHING, ids=lambda s: f"{s['ingress']['preset']}-{s['autoscaling']['provider']}")
def test_every_rendered_child_is_accepted_by_the_api_server(kube, namespace, crds, spec) -> None:
    body = make_body(spec, namespace=namespace)
    rendered = [(kind, obj) for _, kind, obj in children.optional_children(body) if obj is not None]
    assert {kind for kind, _ in rendered} >= {"Ingress", "HTTPRoute", "NetworkPolicy"}
    with kube.api_client() as api:
        for kind, obj in rendered:
            created = server_dry_run_create(api, obj)
            assert created["kind"] == kind
        # The OrpheusTTS itself, with every new field set, passes the CRD's schema and rules.
        server_dry_run_create(api, {**body, "metadata": {"name": "voice", "namespace": namespace}})


def test_httproute_timeouts_are_what_the_gateway_api_accepts(kube, namespace, crds) -> None:
    body = make_body({"gateway": {"enabled": True, "parentRefs": [PARENT]}}, namespace=namespace)
    route = exposure.render_httproute(body)
    with kube.api_client() as api:
        created = server_dry_run_create(api, route)
        assert created["spec"]["rules"][0]["timeouts"] == {"request": "0s"}
        assert created["spec"]["rules"][1]["timeouts"]["request"] == "5340s"
        # The check is real: a duration the Gateway API does not accept is refused.
        route["spec"]["rules"][1]["timeouts"]["request"] = "forever"
        with pytest.raises(ApiException) as err:
            server_dry_run_create(api, route)
        assert err.value.status == 422


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"gateway": {"enabled": True}}, "gateway.parentRefs must name at least one Gateway"),
        ({"autoscaling": {"enabled": True, "provider": "keda"}}, "autoscaling.keda.prometheusAddress is required"),
        ({"ingress": {"enabled": True, "host": "h", "preset": "haproxy"}}, "Unsupported value"),
    ],
)
def test_crd_rules_refuse_incomplete_exposure(kube, namespace, crds, spec, message) -> None:
    body = make_body(spec, namespace=namespace)
    obj = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "voice", "namespace": namespace}}
    with kube.api_client() as api, pytest.raises(ApiException) as err:
        server_dry_run_create(api, {**obj, "spec": spec or body["spec"]})
    assert err.value.status == 422 and message in err.value.body


def test_kubectl_scale_sets_the_runtime_replicas(kube, namespace, crds) -> None:
    with kube.api_client() as api:
        objects = client.CustomObjectsApi(api)
        objects.create_namespaced_custom_object(
            crd.GROUP,
            crd.VERSION,
            namespace,
            crd.PLURAL,
            {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "voice"}, "spec": {}},
        )
        # runtime.replicas unset ("leave the count alone"): GET on the scale subresource is an error (the API
        # server needs specReplicasPath to exist), but kubectl scale patches it and works.
        with pytest.raises(ApiException) as unset:
            objects.get_namespaced_custom_object_scale(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "voice")
        assert ".spec.runtime.replicas" in unset.value.body and "does not exist" in unset.value.body
        kubectl = ["kubectl", "--kubeconfig", str(kube.admin_kubeconfig), "-n", namespace]
        out = subprocess.run([*kubectl, "scale", "otts/voice", "--replicas=3"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "scaled" in out.stdout
        got = objects.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "voice")
        assert got["spec"]["runtime"]["replicas"] == 3
        scale = objects.get_namespaced_custom_object_scale(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "voice")
        assert scale["spec"]["replicas"] == 3
        shown = subprocess.run(
            [*kubectl, "get", "otts/voice", "--subresource=scale", "-o", "yaml"], capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert yaml.safe_load(shown.stdout)["spec"]["replicas"] == 3
