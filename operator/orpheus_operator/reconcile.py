"""One reconciliation of one OrpheusTTS: read it and its children, write what should be, report status.

Level-triggered: every pass starts from the resource and the cluster (no memory between passes), so any
trigger (a change, a child's event, the resync timer, an operator restart) converges to the same state.
A pass is a pipeline, one step each, in this order (`Reconciler._reconcile` reads the same):
  1. storage    PVC (+ engine store when ReadWriteOnce)                                   `_apply_storage`
  2. build      the build Job of the spec's engine hash: observe it, (re)start it         `build_step.build`
  3. serve      (once an engine is built) Deployment + Service + PDB (+ Ingress, HPA...)  `_serve`
  4. clean up   build Jobs of engines neither wanted nor served, older attempts           `_delete_stale_jobs`
  5. report     status (phase, conditions), metrics, the Failed event                     `_report`
While a new engine builds, the Deployment keeps serving the engine recorded in its annotation.
Children the API server rejects do not stop the pipeline: the pass's ChildWriter collects them (child_writer.py),
and step 5 reports them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any, NamedTuple

import kopf

from orpheus_operator import build_step, buildstate, children, crd, engine_identity, exposure, metrics, render, status
from orpheus_operator.buildstate import BuildState
from orpheus_operator.child_writer import ChildWriter, kopf_body
from orpheus_operator.config import OperatorConfig
from orpheus_operator.kube import ApiError, Kube

logger = logging.getLogger(__name__)


class ServedEngine(NamedTuple):
    engine_hash: str
    build: dict[str, Any]  # its build spec (engine_identity.build_spec)


def served_engine(deployment: dict[str, Any] | None) -> ServedEngine | None:
    """The engine an existing Deployment serves (its hash label and build-spec annotation)."""
    if deployment is None:
        return None
    meta = deployment["metadata"]
    engine_hash = (meta.get("labels") or {}).get(crd.HASH_LABEL)
    raw = (meta.get("annotations") or {}).get(crd.BUILD_SPEC_ANNOTATION)
    if not engine_hash or not raw:
        return None
    try:
        return ServedEngine(engine_hash, json.loads(raw))
    except ValueError:
        return None


def engine_to_serve(state: BuildState, build: dict[str, Any], before: ServedEngine | None) -> ServedEngine | None:
    """The spec's engine once it is built; until then the one the Deployment already serves (None before the
    first build)."""
    if state.outcome == buildstate.SUCCEEDED:
        return ServedEngine(state.engine_hash, build)
    return before


def attempts_to_keep(jobs: list[dict[str, Any]], state: BuildState, served: ServedEngine | None) -> dict[str, int]:
    """Engine hash -> the build attempt whose Job stays: the spec's engine's latest, and the served engine's."""
    keep = {state.engine_hash: state.attempt}
    if served is not None and served.engine_hash != state.engine_hash:
        old = buildstate.latest_job(jobs, served.engine_hash)
        keep[served.engine_hash] = buildstate.attempt_of(old) if old else 0
    return keep


def namespaced_name(body: dict[str, Any]) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Reconciler:
    def __init__(self, api: Kube, cfg: OperatorConfig) -> None:
        self.api = api
        self.cfg = cfg
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closed = False

    async def close(self) -> None:
        """At shutdown: let running passes finish, start no new ones, then close the API session."""
        self._closed = True
        for lock in list(self._locks.values()):
            async with lock:
                pass
        self.api.close()

    async def reconcile(self, namespace: str, name: str) -> None:
        # The timer, the resource's own events and its children's events may all fire at once.
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            if self._closed:
                return
            body = await self.api.get(crd.API_VERSION, crd.KIND, namespace, name)
            if body is None:
                self._forget(namespace, name)
                return
            try:
                await self._drop_legacy_finalizer(body)
                if body["metadata"].get("deletionTimestamp"):
                    self._forget(namespace, name)
                    return  # owner references let the garbage collector remove the children
                with metrics.reconcile_pass():
                    await self._reconcile(body)
            except ApiError as e:
                if e.status == 403 and "being terminated" in e.message:
                    return  # the namespace is being deleted, and this resource with it
                raise

    def _forget(self, namespace: str, name: str) -> None:
        """The resource is gone (or going): drop its lock and its metric series."""
        self._locks.pop((namespace, name), None)
        metrics.record_status(namespace, name, None)

    async def _drop_legacy_finalizer(self, body: dict[str, Any]) -> None:
        """Versions up to 0.1.0 put a finalizer on every resource although no cleanup needs one; with the operator
        gone (helm uninstall) it stranded the resource. Removed here, also from resources already being deleted."""
        finalizers = body["metadata"].get("finalizers") or []
        if crd.LEGACY_FINALIZER not in finalizers:
            return
        meta = body["metadata"]
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {
                "op": "replace",
                "path": "/metadata/finalizers",
                "value": [f for f in finalizers if f != crd.LEGACY_FINALIZER],
            },
        ]
        await self.api.patch(
            crd.API_VERSION, crd.KIND, meta["namespace"], meta["name"], patch, "application/json-patch+json"
        )

    # ---- the pipeline ------------------------------------------------------------------------------------

    async def _reconcile(self, body: dict[str, Any]) -> None:
        build = engine_identity.build_spec(body["spec"], self.cfg)
        engine_hash = engine_identity.engine_hash(build)
        writer = ChildWriter(self.api, body)
        await self._apply_storage(writer)
        jobs = await self._list_build_jobs(body)
        state = await build_step.build(writer, self.cfg, build, engine_hash, jobs, now_utc())
        deployment = await self.api.get("apps/v1", "Deployment", *namespaced_name(body))
        served = engine_to_serve(state, build, served_engine(deployment))
        if served is not None:
            deployment = await self._serve(writer, served, deployment)
        await self._delete_stale_jobs(body, jobs, attempts_to_keep(jobs, state, served))
        await self._report(body, state, served, deployment if served else None, writer.errors)

    async def _apply_storage(self, writer: ChildWriter) -> None:
        """The engines PVC; with ReadWriteOnce the engine store too (the build Job joins its node), with
        ReadWriteMany no store (deleted if the operator made one)."""
        body = writer.body
        store = crd.store_name(body["metadata"]["name"])
        await writer.apply(render.render_pvc(body))
        await writer.apply_or_delete(render.render_store(body, self.cfg), "apps/v1", "Deployment", store)
        await writer.apply_or_delete(render.render_store_service(body), "v1", "Service", store)

    async def _list_build_jobs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        meta = body["metadata"]
        selector = {crd.INSTANCE_LABEL: meta["name"], crd.COMPONENT_LABEL: crd.ENGINE_BUILD}
        return await self.api.list("batch/v1", "Job", meta["namespace"], selector)

    async def _serve(
        self, writer: ChildWriter, served: ServedEngine, deployment: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Rolls the Deployment out to `served` and applies the children in front of it; returns the Deployment
        as applied (as it was, when the API server rejected it)."""
        body = writer.body
        wanted = render.render_deployment(body, self.cfg, served.build, served.engine_hash, deployment)
        applied = await writer.apply_deployment(wanted, deployment)
        before = served_engine(deployment)
        if before is None or before.engine_hash != served.engine_hash:
            message = f"deployment {body['metadata']['name']} now serves engine {served.engine_hash}"
            kopf.info(kopf_body(body), reason="RollingOut", message=message)
        service = render.render_service(body)
        service["metadata"]["annotations"] = exposure.service_annotations(body)  # ingress presets
        await writer.apply(service)
        await writer.apply_or_delete(render.render_pdb(body), "policy/v1", "PodDisruptionBudget")
        # Ingress, HTTPRoute, NetworkPolicy, HPA, ScaledObject: each deleted when the spec no longer asks for it.
        for api_version, kind, child in children.optional_children(body):
            await writer.apply_or_delete(child, api_version, kind)
        return applied or deployment

    async def _delete_stale_jobs(self, body: dict[str, Any], jobs: list[dict[str, Any]], keep: dict[str, int]) -> None:
        for job in buildstate.stale_jobs(jobs, keep):
            await self.api.delete("batch/v1", "Job", body["metadata"]["namespace"], job["metadata"]["name"])

    async def _report(
        self,
        body: dict[str, Any],
        state: BuildState,
        served: ServedEngine | None,
        deployment: dict[str, Any] | None,
        errors: list[status.Problem],
    ) -> None:
        """Writes the status when it changed, records it in the metrics, and warns once when a build fails."""
        ns, name = namespaced_name(body)
        observation = status.Observation(
            generation=body["metadata"].get("generation", 0),
            build=state,
            endpoint=exposure.endpoint(body) or render.endpoint(body),
            serving_hash=served.engine_hash if served else None,
            deployment=deployment,
            errors=errors,
        )
        old = body.get("status") or {}
        new = status.with_times(old, status.compute(observation), now_utc())
        new["selector"] = exposure.selector(body)  # the scale subresource's labelSelectorPath
        if state.outcome == buildstate.FAILED and old.get("phase") != "Failed":
            kopf.warn(kopf_body(body), reason=state.reason, message=state.message)
        metrics.record_status(ns, name, new)
        if status.changed(old, new):
            await self.api.patch_status(crd.API_VERSION, crd.KIND, ns, name, new)
            logger.info("%s/%s: %s (%s)", ns, name, new["phase"], new["message"])
