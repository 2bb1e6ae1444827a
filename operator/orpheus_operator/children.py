"""The optional children of an OrpheusTTS (issue #12): each is rendered when its spec field asks for it and
deleted (if the operator made it) when not. reconcile.py applies this list in one loop, so adding a child
kind means one line here and an RBAC rule in the chart (kube.py finds every kind through discovery).
"""

from __future__ import annotations

from typing import Any

from orpheus_operator import exposure, scaling

Body = dict[str, Any]


def optional_children(body: Body) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(apiVersion, kind, object or None) for each optional child. For a kind whose CRD is not installed
    (HTTPRoute without Gateway API, ScaledObject without KEDA) kube.py answers the ownership check's GET with
    None, "nothing to delete": only a resource that asks for such a child needs its CRD (else ChildRejected)."""
    return [
        ("networking.k8s.io/v1", "Ingress", exposure.render_ingress(body)),
        (exposure.GATEWAY_API_VERSION, "HTTPRoute", exposure.render_httproute(body)),
        ("networking.k8s.io/v1", "NetworkPolicy", exposure.render_network_policy(body)),
        ("autoscaling/v2", "HorizontalPodAutoscaler", scaling.render_hpa(body)),
        (scaling.KEDA_API_VERSION, "ScaledObject", scaling.render_scaled_object(body)),
    ]
