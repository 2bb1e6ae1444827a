"""Writing one resource's children during one pass: server-side apply, create, delete-if-ours.

A child the API server refuses (invalid, immutable field, quota) is a problem of the resource, not of the operator:
it is collected in `errors` for the status (reason ChildRejected) and the pass goes on. Transient errors and the
operator's own misconfiguration (RBAC) are raised instead, for kopf to log and retry.
"""

from __future__ import annotations

from typing import Any, cast

import kopf

from orpheus_operator import crd, metrics, render
from orpheus_operator.kube import ApiError, Kube

Problem = tuple[str, str]  # (reason, message)


def rejected(exc: ApiError, what: str) -> Problem:
    """A child the API server refuses: a status problem, not a crash."""
    return "ChildRejected", f"{what}: {exc.message}"


def retryable(exc: ApiError) -> bool:
    """Transient, or the operator's own misconfiguration (RBAC): raised for kopf to log and retry, not put in
    the resource's status."""
    return exc.status >= 500 or exc.status in (401, 403, 409, 429)


def kopf_body(body: dict[str, Any]) -> kopf.Body:
    """The resource as kopf's event functions take it: its read-only view of the raw object."""
    return kopf.Body(cast(kopf.RawBody, body))


class ChildWriter:
    def __init__(self, api: Kube, body: dict[str, Any]) -> None:
        self.api = api
        self.body = body  # the owner: an OrpheusTTS
        self.errors: list[Problem] = []  # children the API server rejected in this pass

    def _refused(self, exc: ApiError, what: str) -> None:
        if retryable(exc):
            raise exc
        self.errors.append(rejected(exc, what))

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply; the object as applied, or None when it was rejected."""
        try:
            return await self.api.apply(obj)
        except ApiError as e:
            self._refused(e, f"{obj['kind']} {obj['metadata']['name']}")
            metrics.CHILD_REJECTIONS.labels(obj["kind"]).inc()
            return None

    async def create(self, obj: dict[str, Any]) -> bool:
        """Creates `obj`; True when it exists afterwards (409: a previous pass, whose list did not see it yet,
        created it already)."""
        try:
            await self.api.create(obj)
        except ApiError as e:
            if e.status == 409:
                return True
            self._refused(e, f"{obj['kind']} {obj['metadata']['name']}")
            return False
        return True

    async def apply_or_delete(
        self, obj: dict[str, Any] | None, api_version: str, kind: str, child_name: str | None = None
    ) -> None:
        """Applies `obj`; None means the spec does not ask for this child: it is deleted if the operator made it."""
        if obj is not None:
            await self.apply(obj)
            return
        meta = self.body["metadata"]
        name = child_name or meta["name"]
        existing = await self.api.get(api_version, kind, meta["namespace"], name)
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == meta["uid"] for o in owners):  # never delete what someone else made
            await self.api.delete(api_version, kind, meta["namespace"], name)

    async def apply_deployment(self, obj: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any] | None:
        """Applies the Deployment. When the operator is about to stop sending spec.replicas (autoscaling switched
        on, or runtime.replicas unset), another field manager first takes the field at its current value, so the
        running pod count does not change by itself."""
        if existing is not None and "replicas" not in obj["spec"] and render.manages_replicas(existing):
            handover = render.replicas_handover(existing)
            try:
                await self.api.apply(handover, manager=crd.HANDOVER_MANAGER)
            except ApiError as e:
                self._refused(e, f"Deployment {obj['metadata']['name']}")
                return None
            message = f"keeping {handover['spec']['replicas']} replicas"
            kopf.info(kopf_body(self.body), reason="ReplicasHandedOver", message=message)
        return await self.apply(obj)
