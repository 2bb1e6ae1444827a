"""The build step of a pass: where the build of the spec's engine stands (its latest Job, that Job's pods, Events and
progress log), and the Job of the next attempt when there is none yet or a failed one's backoff has passed.

The decisions are buildstate.py's (pure); this module does the reading and the one write, a Job create.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from orpheus_operator import buildstate, metrics, render
from orpheus_operator.buildstate import BuildState
from orpheus_operator.child_writer import ChildWriter, kopf_body
from orpheus_operator.config import OperatorConfig
from orpheus_operator.kube import ApiError, Kube

logger = logging.getLogger(__name__)
# Lines of a running build pod's log searched for its latest progress report.
PROGRESS_TAIL_LINES = 20


async def build(
    writer: ChildWriter,
    cfg: OperatorConfig,
    build_spec: dict[str, Any],
    engine_hash: str,
    jobs: list[dict[str, Any]],
    now: datetime.datetime,
) -> BuildState:
    """Where the build of `engine_hash` stands; starts its first attempt, or the next one once a failed attempt's
    backoff has passed (the new Job is added to `jobs`)."""
    job = buildstate.latest_job(jobs, engine_hash)
    state = await observe(writer.api, cfg, writer.body["metadata"]["namespace"], engine_hash, job)
    if state.outcome == buildstate.MISSING or buildstate.retry_due(state, now):
        return await start(writer, build_spec, state, jobs)
    return state


async def observe(api: Kube, cfg: OperatorConfig, ns: str, engine_hash: str, job: dict[str, Any] | None) -> BuildState:
    """The build state from the latest Job and, while it has not succeeded, its pods, the Job's Events (when it
    has no pod) and the progress its running pod last logged."""
    pods: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    progress = None
    if job is not None and buildstate.job_outcome(job) != buildstate.SUCCEEDED:
        pods = await api.list("v1", "Pod", ns, {"job-name": job["metadata"]["name"]})
        if not pods and job["metadata"].get("uid"):  # admission, quota: only the Job's Events say why
            events = await api.events_for(ns, job["metadata"]["uid"])
        progress = await read_progress(api, ns, pods)
    return buildstate.evaluate(engine_hash, job, pods, cfg, events, progress)


async def read_progress(api: Kube, ns: str, pods: list[dict[str, Any]]) -> buildstate.Progress | None:
    """What the running build pod last reported in its log (`build-engine: [step N%] ...`)."""
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return None
    try:
        log = await api.log_tail(ns, running[0]["metadata"]["name"], "build", PROGRESS_TAIL_LINES)
    except ApiError as e:  # the kubelet may not answer (node gone): progress is optional
        logger.debug("no build log from %s: %s", running[0]["metadata"]["name"], e)
        return None
    return buildstate.parse_progress(log)


async def start(
    writer: ChildWriter, build_spec: dict[str, Any], state: BuildState, jobs: list[dict[str, Any]]
) -> BuildState:
    """Creates the Job of the next attempt (added to `jobs`); a rejected Job leaves `state` as it was."""
    new = render.render_job(writer.body, build_spec, state.engine_hash, state.attempt + 1)
    name = new["metadata"]["name"]
    if not await writer.create(new):
        return state
    metrics.BUILDS_STARTED.inc()
    retry = f" (retry after: {state.message})" if state.outcome == buildstate.FAILED else ""
    message = f"job {name} builds engine {state.engine_hash}{retry}"
    kopf.info(kopf_body(writer.body), reason="BuildStarted", message=message)
    jobs.append(new)
    return buildstate.building(state.engine_hash, state.attempt + 1, name)
