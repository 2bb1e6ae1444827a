"""One reconciliation of one OrpheusTTS: read it and its children, write what should be, report status.

Level-triggered: every pass starts from the resource and the cluster (no memory between passes), so any
trigger (a change, a child's event, the resync timer, an operator restart) converges to the same state.
A pass is a pipeline, one step per method of `Reconciler`, in this order (`_reconcile` reads the same):
  1. storage     PVC (+ engine store when ReadWriteOnce)                          `_apply_storage`
  2. build       the build Job for the spec's engine hash: observe it, (re)start it  `_build`
  3. serve       (once an engine is built) Deployment + Service + PDB (+ Ingress, HPA...)  `_serve`
  4. clean up    build Jobs of engines neither wanted nor served, older attempts   `_delete_stale_jobs`
  5. report      status (phase, conditions), metrics, the Failed event            `_report`
While a new engine builds, the Deployment keeps serving the engine recorded in its annotation.
Children the API server rejects do not stop the pipeline: each step adds them to `errors`, and step 5 reports them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any, NamedTuple, cast

import kopf

from orpheus_operator import buildstate, children, crd, engine_identity, exposure, metrics, render, status
from orpheus_operator.buildstate import BuildState
from orpheus_operator.config import OperatorConfig
from orpheus_operator.kube import ApiError, Kube

logger = logging.getLogger(__name__)
# Lines of a running build pod's log searched for its latest progress report.
PROGRESS_TAIL_LINES = 20

Errors = list[tuple[str, str]]  # (reason, message) of each child the API server rejected in this pass


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


def rejected(exc: ApiError, what: str) -> tuple[str, str]:
    """A child the API server refuses (invalid, immutable field, quota): a status problem, not a crash."""
    return "ChildRejected", f"{what}: {exc.message}"


def retryable(exc: ApiError) -> bool:
    """Transient, or the operator's own misconfiguration (RBAC): raised for kopf to log and retry, not put in
    the resource's status."""
    return exc.status >= 500 or exc.status in (401, 403, 409, 429)


def kopf_body(body: dict[str, Any]) -> kopf.Body:
    """The resource as kopf's event functions take it: its read-only view of the raw object."""
    return kopf.Body(cast(kopf.RawBody, body))


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
        errors: Errors = []
        await self._apply_storage(body, errors)
        jobs = await self._list_build_jobs(body)
        state = await self._build(body, build, engine_hash, jobs, errors)
        deployment = await self.api.get(
            "apps/v1", "Deployment", body["metadata"]["namespace"], body["metadata"]["name"]
        )
        served = engine_to_serve(state, build, served_engine(deployment))
        if served is not None:
            deployment = await self._serve(body, served, deployment, errors)
        await self._delete_stale_jobs(body, jobs, attempts_to_keep(jobs, state, served))
        await self._report(body, state, served, deployment if served else None, errors)

    # 1. storage

    async def _apply_storage(self, body: dict[str, Any], errors: Errors) -> None:
        """The engines PVC; with ReadWriteOnce the engine store too (the build Job joins its node), with
        ReadWriteMany no store (deleted if the operator made one)."""
        store = crd.store_name(body["metadata"]["name"])
        await self._apply(render.render_pvc(body), errors)
        await self._apply_or_delete(render.render_store(body, self.cfg), "apps/v1", "Deployment", body, errors, store)
        await self._apply_or_delete(render.render_store_service(body), "v1", "Service", body, errors, store)

    # 2. build

    async def _list_build_jobs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        meta = body["metadata"]
        selector = {crd.INSTANCE_LABEL: meta["name"], crd.COMPONENT_LABEL: crd.ENGINE_BUILD}
        return await self.api.list("batch/v1", "Job", meta["namespace"], selector)

    async def _build(
        self, body: dict[str, Any], build: dict[str, Any], engine_hash: str, jobs: list[dict[str, Any]], errors: Errors
    ) -> BuildState:
        """Where the build of `engine_hash` stands; starts its first attempt, or the next one once a failed
        attempt's backoff has passed."""
        job = buildstate.latest_job(jobs, engine_hash)
        state = await self._observe_build(body["metadata"]["namespace"], engine_hash, job)
        if state.outcome == buildstate.MISSING or buildstate.retry_due(state, now_utc()):
            return await self._start_build(body, build, state, jobs, errors)
        return state

    async def _observe_build(self, ns: str, engine_hash: str, job: dict[str, Any] | None) -> BuildState:
        """The build state from the latest Job and, while it has not succeeded, its pods, the Job's Events (when it
        has no pod) and the progress its running pod last logged."""
        pods: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        progress = None
        if job is not None and buildstate.job_outcome(job) != buildstate.SUCCEEDED:
            pods = await self.api.list("v1", "Pod", ns, {"job-name": job["metadata"]["name"]})
            if not pods and job["metadata"].get("uid"):  # admission, quota: only the Job's Events say why
                events = await self.api.events_for(ns, job["metadata"]["uid"])
            progress = await self._progress(ns, pods)
        return buildstate.evaluate(engine_hash, job, pods, self.cfg, events, progress)

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

    async def _start_build(
        self, body: dict[str, Any], build: dict[str, Any], state: BuildState, jobs: list[dict[str, Any]], errors: Errors
    ) -> BuildState:
        """Creates the Job of the next attempt (added to `jobs`); a rejected Job leaves `state` as it was."""
        new = render.render_job(body, build, state.engine_hash, state.attempt + 1)
        name = new["metadata"]["name"]
        try:
            await self.api.create(new)
        except ApiError as e:
            # 409: created by a previous pass whose list did not see it yet.
            if e.status != 409:
                if retryable(e):
                    raise
                errors.append(rejected(e, f"Job {name}"))
                return state
        metrics.BUILDS_STARTED.inc()
        retry = f" (retry after: {state.message})" if state.outcome == buildstate.FAILED else ""
        kopf.info(
            kopf_body(body), reason="BuildStarted", message=f"job {name} builds engine {state.engine_hash}{retry}"
        )
        jobs.append(new)
        return buildstate.building(state.engine_hash, state.attempt + 1, name)

    # 3. serve

    async def _serve(
        self, body: dict[str, Any], served: ServedEngine, deployment: dict[str, Any] | None, errors: Errors
    ) -> dict[str, Any] | None:
        """Rolls the Deployment out to `served` and applies the children in front of it; returns the Deployment
        as applied (as it was when the API server rejected it)."""
        wanted = render.render_deployment(body, self.cfg, served.build, served.engine_hash, deployment)
        applied = await self._apply_deployment(body, wanted, deployment, errors)
        before = served_engine(deployment)
        if before is None or before.engine_hash != served.engine_hash:
            message = f"deployment {body['metadata']['name']} now serves engine {served.engine_hash}"
            kopf.info(kopf_body(body), reason="RollingOut", message=message)
        await self._apply_serving_children(body, errors)
        return applied or deployment

    async def _apply_deployment(
        self, body: dict[str, Any], obj: dict[str, Any], existing: dict[str, Any] | None, errors: Errors
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
            kopf.info(
                kopf_body(body), reason="ReplicasHandedOver", message=f"keeping {handover['spec']['replicas']} replicas"
            )
        return await self._apply(obj, errors)

    async def _apply_serving_children(self, body: dict[str, Any], errors: Errors) -> None:
        """Service and PDB, then the optional children (Ingress, HTTPRoute, NetworkPolicy, HPA, ScaledObject:
        children.py); a child the spec no longer asks for is deleted."""
        service = render.render_service(body)
        service["metadata"]["annotations"] = exposure.service_annotations(body)  # ingress presets
        await self._apply(service, errors)
        await self._apply_or_delete(render.render_pdb(body), "policy/v1", "PodDisruptionBudget", body, errors)
        for api_version, kind, child in children.optional_children(body):
            await self._apply_or_delete(child, api_version, kind, body, errors)

    # 4. clean up

    async def _delete_stale_jobs(self, body: dict[str, Any], jobs: list[dict[str, Any]], keep: dict[str, int]) -> None:
        for job in buildstate.stale_jobs(jobs, keep):
            await self.api.delete("batch/v1", "Job", body["metadata"]["namespace"], job["metadata"]["name"])

    # 5. report

    async def _report(
        self,
        body: dict[str, Any],
        state: BuildState,
        served: ServedEngine | None,
        deployment: dict[str, Any] | None,
        errors: Errors,
    ) -> None:
        """Writes the status when it changed, records it in the metrics, and warns once when a build fails."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        observation = status.Observation(
            generation=meta.get("generation", 0),
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

    # ---- writing children ---------------------------------------------------------------------------------

    async def _apply(self, obj: dict[str, Any], errors: Errors) -> dict[str, Any] | None:
        try:
            return await self.api.apply(obj)
        except ApiError as e:
            if retryable(e):
                raise
            errors.append(rejected(e, f"{obj['kind']} {obj['metadata']['name']}"))
            metrics.CHILD_REJECTIONS.labels(obj["kind"]).inc()
            return None

    async def _apply_or_delete(
        self,
        obj: dict[str, Any] | None,
        api_version: str,
        kind: str,
        body: dict[str, Any],
        errors: Errors,
        child_name: str | None = None,
    ) -> None:
        """Applies `obj`; None means the spec does not ask for this child: it is deleted if the operator made it."""
        if obj is not None:
            await self._apply(obj, errors)
            return
        meta = body["metadata"]
        name = child_name or meta["name"]
        existing = await self.api.get(api_version, kind, meta["namespace"], name)
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == meta["uid"] for o in owners):  # never delete what someone else made
            await self.api.delete(api_version, kind, meta["namespace"], name)
