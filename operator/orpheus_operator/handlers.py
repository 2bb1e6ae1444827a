"""kopf handlers: every trigger runs the same level-triggered reconciliation of one OrpheusTTS.

- the resource's own watch events (creation, spec changes, operator start: kopf lists everything first),
- its children's events (a Job finishing, a Deployment becoming available): reacts without waiting,
- one resync loop over all resources: drift, build retries after their backoff, anything missed.

Only watch-event handlers: kopf puts no finalizer on a resource for them (timers, daemons and on.delete
handlers would need one). The operator has no cleanup to do on deletion (ownerReferences let the garbage
collector remove the children), so deleting a resource never waits for the operator, and `helm uninstall`,
which removes the operator first, strands nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from orpheus_operator import crd
from orpheus_operator.config import OperatorConfig
from orpheus_operator.kube import ApiError, Kube
from orpheus_operator.reconcile import Reconciler

logger = logging.getLogger(__name__)
MANAGED = {crd.MANAGED_BY_LABEL: crd.MANAGED_BY}


def owner_name(body: Any) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == crd.KIND and ref.get("apiVersion", "").startswith(crd.GROUP + "/"):
            return ref.get("name")
    return None


def configure(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    # Namespaced mode runs under Roles only: no listing of namespaces or CRDs.
    settings.scanning.disabled = not cfg.clusterwide
    # Reconnect watches regularly so a silently dropped connection cannot stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


async def resync(reconciler: Reconciler, cfg: OperatorConfig) -> None:
    """Reconciles every resource every cfg.resync_seconds."""
    while True:
        await asyncio.sleep(cfg.resync_seconds)
        for namespace in cfg.namespaces or (None,):
            try:
                items = await reconciler.api.list(crd.API_VERSION, crd.KIND, namespace)
            except ApiError as e:
                logger.warning("resync: cannot list %s in %s: %s", crd.PLURAL, namespace or "all namespaces", e)
                continue
            for item in items:
                meta = item["metadata"]
                try:
                    await reconciler.reconcile(meta["namespace"], meta["name"])
                except Exception:  # one resource's trouble must not stop the others' resync
                    logger.exception("resync of %s/%s failed", meta["namespace"], meta["name"])


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig, api: Kube | None = None) -> Reconciler:
    reconciler = Reconciler(api or Kube(), cfg)
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, cfg)
        tasks.append(asyncio.create_task(resync(reconciler, cfg)))

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        # kopf's own readers of the same credentials as the operator's client: the pod's service account
        # (re-read when the rotating token expires), else $KUBECONFIG / ~/.kube/config.
        return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await reconciler.close()

    @kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL, id="resource_event", registry=registry)
    # kopf passes `namespace` None for cluster-scoped objects; ours and their children are all namespaced.
    async def resource_event(type: str | None, namespace: str | None, name: str, **_: Any) -> None:
        if type != "DELETED" and namespace:
            await reconciler.reconcile(namespace, name)

    async def child_event(body: Any, namespace: str | None, **_: Any) -> None:
        owner = owner_name(body)
        if owner and namespace:
            await reconciler.reconcile(namespace, owner)

    kopf.on.event("batch", "v1", "jobs", id="job_event", labels=MANAGED, registry=registry)(child_event)
    kopf.on.event("apps", "v1", "deployments", id="deployment_event", labels=MANAGED, registry=registry)(child_event)
    return reconciler
