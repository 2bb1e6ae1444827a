"""Autoscaling of the serving Deployment on active streams per pod: an HPA (through a custom metrics adapter
such as prometheus-adapter, docs/prometheus-adapter-values.yaml) or a KEDA ScaledObject (KEDA queries
Prometheus itself). Pure functions of the defaulted resource, like render.py.

Scale-down must never stop pods faster than they drain: a pod told to stop refuses new streams and lets its
admitted ones finish for up to drainGraceSeconds (after the preStop sleep). The scale-down policy removes at
most `scaleDownPodsPerPeriod` pods per period, and the period is one whole drain, so at most that many pods
drain at any time and the fleet never loses more capacity than the HPA decided to give up.
"""

from __future__ import annotations

import copy
from typing import Any

from orpheus_operator import crd
from orpheus_operator.exposure import _metadata

Body = dict[str, Any]

# render.PRESTOP_SLEEP_SECONDS and render.SHUTDOWN_MARGIN_SECONDS (tests tie them): the whole time a pod
# needs between being told to stop and being gone.
PRESTOP_SLEEP_SECONDS = 5
SHUTDOWN_MARGIN_SECONDS = 15
MAX_POLICY_PERIOD_SECONDS = 1800  # the HPA API's limit on a policy's periodSeconds
KEDA_API_VERSION = "keda.sh/v1alpha1"


def drain_seconds(spec: dict[str, Any]) -> int:
    return PRESTOP_SLEEP_SECONDS + spec["runtime"]["drainGraceSeconds"] + SHUTDOWN_MARGIN_SECONDS


def behavior(spec: dict[str, Any]) -> dict[str, Any]:
    """HPA behavior: react to load at once (GPU pods take minutes to become ready), give capacity back slowly
    and never faster than pods drain."""
    scaling = spec["autoscaling"]
    period = max(60, min(MAX_POLICY_PERIOD_SECONDS, drain_seconds(spec)))
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": scaling["scaleUpPodsPerPeriod"], "periodSeconds": 60},
                {"type": "Percent", "value": 100, "periodSeconds": 60},
            ],
        },
        "scaleDown": {
            # The highest recommendation of the window wins: a short lull does not give away warm GPUs.
            "stabilizationWindowSeconds": max(scaling["scaleDownStabilizationSeconds"], period),
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": scaling["scaleDownPodsPerPeriod"], "periodSeconds": period}],
        },
    }


def render_hpa(body: Body) -> dict[str, Any] | None:
    """autoscaling/v2 HPA on the orpheus_active_streams Pods metric, with behavior(); None unless
    autoscaling.enabled with provider hpa. The Deployment then leaves spec.replicas to it (render.desired_replicas,
    and the hand-over of the field in reconcile.py)."""
    spec = body["spec"]
    scaling = spec["autoscaling"]
    if not scaling["enabled"] or scaling["provider"] != "hpa":
        return None
    name = body["metadata"]["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(body),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling["minReplicas"],
            "maxReplicas": scaling["maxReplicas"],
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": crd.ACTIVE_STREAMS_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(scaling["targetActiveStreamsPerPod"])},
                    },
                }
            ],
            "behavior": behavior(spec),
        },
    }


def active_streams_query(body: Body) -> str:
    """PromQL: the streams all of this resource's runtime pods hold now. Pod names are <name>-<rs>-<pod>;
    `namespace` and `pod` are the target labels every Prometheus Kubernetes scrape config sets."""
    meta = body["metadata"]
    return (
        f'sum(max_over_time({crd.ACTIVE_STREAMS_METRIC}{{namespace="{meta["namespace"]}",'
        f'pod=~"{meta["name"]}-[a-z0-9]+-[a-z0-9]+"}}[1m]))'
    )


def render_scaled_object(body: Body) -> dict[str, Any] | None:
    """A KEDA ScaledObject (KEDA makes and owns the HPA); None unless autoscaling.provider is keda.
    KEDA's prometheus scaler divides the query's value by `threshold` to get the replica count: the same
    target per pod as the HPA's AverageValue."""
    spec = body["spec"]
    scaling = spec["autoscaling"]
    if not scaling["enabled"] or scaling["provider"] != "keda":
        return None
    keda = scaling["keda"]
    trigger_metadata = {
        "serverAddress": keda["prometheusAddress"],
        "query": active_streams_query(body),
        "threshold": str(scaling["targetActiveStreamsPerPod"]),
    }
    trigger: dict[str, Any] = {"type": "prometheus", "metricType": "AverageValue", "metadata": trigger_metadata}
    if keda.get("authenticationRef"):
        trigger["authenticationRef"] = copy.deepcopy(keda["authenticationRef"])
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": _metadata(body),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": body["metadata"]["name"]},
            "minReplicaCount": scaling["minReplicas"],
            "maxReplicaCount": scaling["maxReplicas"],
            "pollingInterval": 15,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(spec)}},
            "triggers": [trigger],
        },
    }
