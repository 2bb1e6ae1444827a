"""kopf handlers: every trigger runs the same level-triggered reconciliation of one OrpheusTTS.

- the resource's own watch events (creation, spec changes, operator start: kopf lists everything first),
- its children's events (a Job finishing, a Deployment becoming available): reacts without waiting,
- a resync timer per resource: drift, build retries after their backoff, anything missed.
"""

from __future__ import annotations

from typing import Any

import kopf

from orpheus_operator import crd, kubeapi
from orpheus_operator.config import OperatorConfig
from orpheus_operator.reconcile import Reconciler

MANAGED = {crd.MANAGED_BY_LABEL: crd.MANAGED_BY}


def owner_name(body: Any) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == crd.KIND and ref.get("apiVersion", "").startswith(crd.GROUP + "/"):
            return ref.get("name")
    return None


def configure(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    settings.persistence.finalizer = crd.FINALIZER
    # Namespaced mode runs under Roles only: no listing of namespaces or CRDs.
    settings.scanning.disabled = not cfg.clusterwide
    # Reconnect watches regularly so a silently dropped connection cannot stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig) -> Reconciler:
    reconciler = Reconciler(kubeapi.KubeApi(), cfg)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, cfg)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.close()

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same login as the operator's own API client: kopf's, without a Kubernetes client library.
        return kubeapi.login(settings)

    @kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL, id="resource_event", registry=registry)
    async def resource_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
        if type != "DELETED":
            await reconciler.reconcile(namespace, name)

    @kopf.timer(crd.GROUP, crd.VERSION, crd.PLURAL, id="resync", interval=cfg.resync_seconds, registry=registry)
    async def resync(namespace: str, name: str, **_: Any) -> None:
        await reconciler.reconcile(namespace, name)

    async def child_event(body: Any, namespace: str, **_: Any) -> None:
        owner = owner_name(body)
        if owner:
            await reconciler.reconcile(namespace, owner)

    kopf.on.event("batch", "v1", "jobs", id="job_event", labels=MANAGED, registry=registry)(child_event)
    kopf.on.event("apps", "v1", "deployments", id="deployment_event", labels=MANAGED, registry=registry)(child_event)
    return reconciler
