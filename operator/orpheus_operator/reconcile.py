"""One reconciliation of one OrpheusTTS: read it and its children, write what should be, report status.

Level-triggered: every pass starts from the resource and the cluster (no memory between passes), so any
trigger (a change, a child's event, the resync timer, an operator restart) converges to the same state.
  PVC (+ engine store when ReadWriteOnce) -> build Job for the spec's engine hash -> (Job succeeded)
  Deployment + Service + PDB (+ Ingress, HPA)
While a new engine builds, the Deployment keeps serving the engine recorded in its annotation.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any

import kopf

from orpheus_operator import buildstate, crd, hashing, render, status
from orpheus_operator.buildstate import BuildState
from orpheus_operator.config import OperatorConfig
from orpheus_operator.kube import ApiError, Kube

logger = logging.getLogger(__name__)
# Lines of a running build pod's log searched for its latest progress report.
PROGRESS_TAIL_LINES = 20


def served_engine(deployment: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """(hash, build spec) of the engine an existing Deployment serves."""
    if deployment is None:
        return None
    meta = deployment["metadata"]
    engine_hash = (meta.get("labels") or {}).get(crd.HASH_LABEL)
    raw = (meta.get("annotations") or {}).get(crd.BUILD_SPEC_ANNOTATION)
    if not engine_hash or not raw:
        return None
    try:
        return engine_hash, json.loads(raw)
    except ValueError:
        return None


def rejected(exc: ApiError, what: str) -> tuple[str, str]:
    """A child the API server refuses (invalid, immutable field, quota): a status problem, not a crash."""
    return "ChildRejected", f"{what}: {exc.message}"


def retryable(exc: ApiError) -> bool:
    """Transient, or the operator's own misconfiguration (RBAC): raised for kopf to log and retry, not put in
    the resource's status."""
    return exc.status >= 500 or exc.status in (401, 403, 409, 429)


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
                self._locks.pop((namespace, name), None)
                return
            try:
                await self._drop_legacy_finalizer(body)
                if body["metadata"].get("deletionTimestamp"):
                    self._locks.pop((namespace, name), None)
                    return  # owner references let the garbage collector remove the children
                await self._reconcile(body)
            except ApiError as e:
                if e.status == 403 and "being terminated" in e.message:
                    return  # the namespace is being deleted, and this resource with it
                raise

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

    async def _apply(self, obj: dict[str, Any], errors: list[tuple[str, str]]) -> dict[str, Any] | None:
        try:
            return await self.api.apply(obj)
        except ApiError as e:
            if retryable(e):
                raise
            errors.append(rejected(e, f"{obj['kind']} {obj['metadata']['name']}"))
            return None

    async def _apply_or_delete(
        self,
        obj: dict[str, Any] | None,
        api_version: str,
        kind: str,
        body: dict[str, Any],
        errors: list[tuple[str, str]],
        child_name: str | None = None,
    ) -> None:
        if obj is not None:
            await self._apply(obj, errors)
            return
        meta = body["metadata"]
        name = child_name or meta["name"]
        existing = await self.api.get(api_version, kind, meta["namespace"], name)
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == meta["uid"] for o in owners):  # never delete what someone else made
            await self.api.delete(api_version, kind, meta["namespace"], name)

    async def _build(
        self,
        body: dict[str, Any],
        build: dict[str, Any],
        engine_hash: str,
        jobs: list[dict[str, Any]],
        errors: list[tuple[str, str]],
    ) -> BuildState:
        ns = body["metadata"]["namespace"]
        job = buildstate.latest_job(jobs, engine_hash)
        pods: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        progress = None
        if job is not None and buildstate.job_outcome(job) != buildstate.SUCCEEDED:
            pods = await self.api.list("v1", "Pod", ns, {"job-name": job["metadata"]["name"]})
            if not pods and job["metadata"].get("uid"):  # admission, quota: only the Job's Events say why
                events = await self.api.events_for(ns, job["metadata"]["uid"])
            progress = await self._progress(ns, pods)
        state = buildstate.evaluate(engine_hash, job, pods, self.cfg, events, progress)
        now = datetime.datetime.now(datetime.timezone.utc)
        if state.outcome == buildstate.MISSING or buildstate.retry_due(state, now):
            new = render.render_job(body, build, engine_hash, state.attempt + 1)
            try:
                await self.api.create(new)
            except ApiError as e:
                # 409: created by a previous pass whose list did not see it yet.
                if e.status != 409:
                    if retryable(e):
                        raise
                    errors.append(rejected(e, f"Job {new['metadata']['name']}"))
                    return state
            kopf.info(
                body,
                reason="BuildStarted",
                message=f"job {new['metadata']['name']} builds engine {engine_hash}"
                + (f" (retry after: {state.message})" if state.outcome == buildstate.FAILED else ""),
            )
            jobs.append(new)
            return buildstate.building(engine_hash, state.attempt + 1, new["metadata"]["name"])
        return state

    async def _progress(self, ns: str, pods: list[dict[str, Any]]) -> buildstate.Progress | None:
        """What the running build pod last reported in its log (`build-engine: [step N%] ...`)."""
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            return None
        try:
            log = await self.api.log_tail(ns, running[0]["metadata"]["name"], "build", PROGRESS_TAIL_LINES)
        except ApiError as e:  # the kubelet may not answer (node gone): progress is optional
            logger.debug("no build log from %s: %s", running[0]["metadata"]["name"], e)
            return None
        return buildstate.parse_progress(log)

    async def _apply_deployment(
        self, body: dict[str, Any], obj: dict[str, Any], existing: dict[str, Any] | None, errors: list[tuple[str, str]]
    ) -> dict[str, Any] | None:
        """Applies the Deployment. When the operator is about to stop sending spec.replicas (autoscaling switched
        on, or runtime.replicas unset), another field manager first takes the field at its current value, so the
        running pod count does not change by itself."""
        if existing is not None and "replicas" not in obj["spec"] and render.manages_replicas(existing):
            handover = render.replicas_handover(existing)
            try:
                await self.api.apply(handover, manager=crd.HANDOVER_MANAGER)
            except ApiError as e:
                if retryable(e):
                    raise
                errors.append(rejected(e, f"Deployment {obj['metadata']['name']}"))
                return None
            kopf.info(body, reason="ReplicasHandedOver", message=f"keeping {handover['spec']['replicas']} replicas")
        return await self._apply(obj, errors)

    async def _reconcile(self, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body["spec"]
        ns, name = meta["namespace"], meta["name"]
        build = hashing.build_spec(spec, self.cfg)
        engine_hash = hashing.engine_hash(build)
        errors: list[tuple[str, str]] = []

        await self._apply(render.render_pvc(body), errors)
        # ReadWriteOnce: the engine store (the build Job joins its node); ReadWriteMany: none (deleted if owned).
        store = crd.store_name(name)
        await self._apply_or_delete(render.render_store(body, self.cfg), "apps/v1", "Deployment", body, errors, store)
        await self._apply_or_delete(render.render_store_service(body), "v1", "Service", body, errors, store)
        jobs = await self.api.list(
            "batch/v1", "Job", ns, {crd.INSTANCE_LABEL: name, crd.COMPONENT_LABEL: crd.ENGINE_BUILD}
        )
        state = await self._build(body, build, engine_hash, jobs, errors)

        deployment = await self.api.get("apps/v1", "Deployment", ns, name)
        before = served_engine(deployment)
        served = (engine_hash, build) if state.outcome == buildstate.SUCCEEDED else before
        if served is not None:
            wanted = render.render_deployment(body, self.cfg, served[1], served[0], deployment)
            applied = await self._apply_deployment(body, wanted, deployment, errors)
            deployment = applied or deployment
            if before is None or before[0] != served[0]:
                kopf.info(body, reason="RollingOut", message=f"deployment {name} now serves engine {served[0]}")
            await self._apply(render.render_service(body), errors)
            await self._apply_or_delete(render.render_pdb(body), "policy/v1", "PodDisruptionBudget", body, errors)
            await self._apply_or_delete(render.render_ingress(body), "networking.k8s.io/v1", "Ingress", body, errors)
            await self._apply_or_delete(
                render.render_hpa(body), "autoscaling/v2", "HorizontalPodAutoscaler", body, errors
            )

        keep = {engine_hash: state.attempt}
        if served is not None and served[0] != engine_hash:
            old = buildstate.latest_job(jobs, served[0])
            keep[served[0]] = buildstate.attempt_of(old) if old else 0
        for job in buildstate.stale_jobs(jobs, keep):
            await self.api.delete("batch/v1", "Job", ns, job["metadata"]["name"])

        new_status = status.compute(
            status.Observation(
                generation=meta.get("generation", 0),
                build=state,
                endpoint=render.endpoint(body),
                serving_hash=served[0] if served else None,
                deployment=deployment if served else None,
                errors=errors,
            )
        )
        old_status = body.get("status") or {}
        if state.outcome == buildstate.FAILED and old_status.get("phase") != "Failed":
            kopf.warn(body, reason=state.reason, message=state.message)
        now = datetime.datetime.now(datetime.timezone.utc)
        final = status.with_times(old_status, new_status, now)
        if status.changed(old_status, final):
            await self.api.patch_status(crd.API_VERSION, crd.KIND, ns, name, final)
            logger.info("%s/%s: %s (%s)", ns, name, final["phase"], final["message"])
