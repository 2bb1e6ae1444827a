"""The operator's Prometheus metrics, served on ORPHEUS_OPERATOR_METRICS_PORT (/metrics) by main.py.

One process, one registry of its own (so tests can read it without the default collectors' noise):
- orpheus_operator_reconciles_total{result}: passes, by "ok" | "error" (an exception kopf retries);
- orpheus_operator_reconcile_duration_seconds: how long a pass takes (API round trips, mostly);
- orpheus_operator_builds_started_total: engine-build Jobs created (first attempts and retries);
- orpheus_operator_child_rejections_total{kind}: children the API server refused (status: ChildRejected);
- orpheus_operator_phase{namespace, name, phase}: 1 for each resource's current status.phase, so alerts
  can ask "which resource is Failed" (the EngineBuildFailed alert) without reading the resources;
- orpheus_operator_replicas / orpheus_operator_ready_replicas{namespace, name}: the serving Deployment's
  wanted and ready pods (the PodsNotReady alert).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Building", "Deploying", "Ready", "Failed")  # the CRD's status.phase enum

REGISTRY = CollectorRegistry()
RECONCILES = Counter("orpheus_operator_reconciles", "Reconcile passes by result", ["result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "orpheus_operator_reconcile_duration_seconds",
    "Wall time of one reconcile pass",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
BUILDS_STARTED = Counter("orpheus_operator_builds_started", "Engine-build Jobs created", registry=REGISTRY)
CHILD_REJECTIONS = Counter(
    "orpheus_operator_child_rejections", "Children the API server refused", ["kind"], registry=REGISTRY
)
PHASE = Gauge("orpheus_operator_phase", "1 for the resource's status.phase", ["namespace", "name", "phase"],
              registry=REGISTRY)  # fmt: skip
REPLICAS = Gauge("orpheus_operator_replicas", "Runtime pods wanted", ["namespace", "name"], registry=REGISTRY)
READY_REPLICAS = Gauge("orpheus_operator_ready_replicas", "Runtime pods ready", ["namespace", "name"],
                       registry=REGISTRY)  # fmt: skip
for _result in ("ok", "error"):
    RECONCILES.labels(_result)  # both series exist from the start: rate() of a missing series is no data


@contextlib.contextmanager
def reconcile_pass() -> Iterator[None]:
    """Counts and times one pass; an exception counts as an error and goes on (kopf retries it)."""
    start = time.monotonic()
    try:
        yield
    except BaseException:
        RECONCILES.labels("error").inc()
        raise
    else:
        RECONCILES.labels("ok").inc()
    finally:
        RECONCILE_SECONDS.observe(time.monotonic() - start)


def record_status(namespace: str, name: str, status: dict | None) -> None:
    """Records a resource's status (phase, replicas); None: the resource is gone, and its series with it."""
    for p in PHASES:
        if status is None:
            with contextlib.suppress(KeyError):
                PHASE.remove(namespace, name, p)
        else:
            PHASE.labels(namespace, name, p).set(1.0 if p == status.get("phase") else 0.0)
    for gauge, key in ((REPLICAS, "replicas"), (READY_REPLICAS, "readyReplicas")):
        if status is None:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        else:
            gauge.labels(namespace, name).set(status.get(key) or 0)


def serve(port: int) -> None:
    """Starts the exposition server in a daemon thread (prometheus_client's own)."""
    start_http_server(port, registry=REGISTRY)
