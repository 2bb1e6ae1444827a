"""The OrpheusTTS status (phase, conditions, counts) from what the cluster says. Pure functions.

Phases: Pending (the build pod cannot start), Building, Deploying (engine built, rollout in progress),
Ready (rolled out and available), Failed (the build failed, or a child was rejected before anything served).
Conditions: Ready (the endpoint serves: `kubectl wait --for=condition=Ready`), EngineBuilt, Available,
Progressing, Degraded (reason + message each). A child rejected while pods serve leaves them serving and
reports Degraded, not Failed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from orpheus_operator import buildstate
from orpheus_operator.buildstate import BuildState

CONDITION_TYPES = ("Ready", "EngineBuilt", "Available", "Progressing", "Degraded")
NO_ENGINE = "waiting for the first engine build"
Problem = tuple[str, str]  # (reason, message)


@dataclass(frozen=True)
class Rollout:
    done: bool
    available: bool
    replicas: int
    ready: int
    message: str
    problem: Problem | None = None  # of a stuck rollout


def _deployment_condition(dep: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (dep.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def rollout_problem(dep: dict[str, Any]) -> Problem | None:
    """(reason, message) of a stuck rollout: past its progress deadline, or pods that cannot be created."""
    progressing = _deployment_condition(dep, "Progressing")
    failure = _deployment_condition(dep, "ReplicaFailure")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "ProgressDeadlineExceeded", progressing.get("message", "rollout stalled")
    if failure.get("status") == "True":
        return failure.get("reason", "ReplicaFailure"), failure.get("message", "")
    return None


def rollout(dep: dict[str, Any]) -> Rollout:
    """Like `kubectl rollout status`: done when the controller has seen the latest spec and every
    desired replica is updated and available, with no old pods left."""
    st = dep.get("status") or {}
    desired = dep["spec"].get("replicas", 1)
    updated, total = st.get("updatedReplicas", 0), st.get("replicas", 0)
    available, ready = st.get("availableReplicas", 0), st.get("readyReplicas", 0)
    is_available = _deployment_condition(dep, "Available").get("status") == "True"
    problem = rollout_problem(dep)
    if st.get("observedGeneration", 0) < dep["metadata"].get("generation", 1):
        msg = "waiting for the deployment controller to see the new spec"
    elif updated < desired:
        msg = f"{updated} of {desired} pods updated"
    elif total > updated:
        msg = f"{total - updated} old pods terminating"
    elif available < updated:
        msg = f"{available} of {updated} updated pods available"
    else:
        return Rollout(True, is_available, total, ready, f"{ready} of {desired} pods ready", problem)
    return Rollout(False, is_available, total, ready, msg, problem)


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from, as left by this reconciliation."""

    generation: int
    build: BuildState
    endpoint: str
    serving_hash: str | None = None  # engine the Deployment runs; None before the first build
    deployment: dict[str, Any] | None = None
    errors: list[Problem] = field(default_factory=list)  # children the API server rejected


def _cond(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def build_stuck(build: BuildState) -> bool:
    """The build pod cannot start (image pull error, missing Secret, unschedulable): a Running Job whose reason
    is not the plain "Building"."""
    return build.outcome == buildstate.RUNNING and build.reason not in ("Building", "")


def problems(obs: Observation, roll: Rollout | None) -> list[Problem]:
    """What is wrong, the one to show first: a failed build (with its next attempt's time), the children the API
    server rejected, a build pod that cannot start, a stalled rollout."""
    build = obs.build
    found: list[Problem] = []
    if build.outcome == buildstate.FAILED:
        retry = f"; next attempt at {build.retry_at:%Y-%m-%dT%H:%M:%SZ}" if build.retry_at else ""
        found.append((build.reason, build.message + retry))
    found += obs.errors
    if build_stuck(build):
        found.append((build.reason, build.message))
    if roll and roll.problem:
        found.append(roll.problem)
    return found


def phase_and_progress(
    obs: Observation, roll: Rollout | None, found: list[Problem]
) -> tuple[str, tuple[bool, str, str]]:
    """The phase, and the Progressing condition's (status, reason, message). Failed: the build failed, or a child
    was rejected before anything served (while pods serve, a rejected child only degrades)."""
    build = obs.build
    if build.outcome == buildstate.FAILED or (obs.errors and roll is None):
        return "Failed", (False, *found[0])
    if build.outcome != buildstate.SUCCEEDED:
        return ("Pending" if build_stuck(build) else "Building"), (True, "BuildingEngine", build.message)
    if roll is None or obs.serving_hash != build.engine_hash or not roll.done:
        return "Deploying", (True, "RollingOut", roll.message if roll else "creating the Deployment")
    return "Ready", (False, "Complete", f"serving engine {build.engine_hash}: {roll.message}")


def ready_condition(roll: Rollout | None, endpoint: str) -> dict[str, Any]:
    """Ready: the endpoint serves (`kubectl wait --for=condition=Ready`)."""
    if roll is None:
        return _cond("Ready", False, "NoEngine", NO_ENGINE)
    if roll.available and roll.ready > 0:
        return _cond("Ready", True, "Serving", f"{endpoint} serves with {roll.ready} pods")
    return _cond("Ready", False, "NotServing", roll.message)


def available_condition(roll: Rollout | None, serving_hash: str | None) -> dict[str, Any]:
    if roll is None:
        return _cond("Available", False, "NoEngine", NO_ENGINE)
    if roll.available:
        return _cond(
            "Available", True, "MinimumReplicasAvailable", f"{roll.ready} pods ready, serving engine {serving_hash}"
        )
    return _cond("Available", False, "Unavailable", roll.message)


def compute(obs: Observation) -> dict[str, Any]:
    """The new status (conditions without times; see merge_conditions)."""
    build = obs.build
    roll = rollout(obs.deployment) if obs.deployment is not None else None
    found = problems(obs, roll)
    phase, progress = phase_and_progress(obs, roll, found)
    conditions = [
        ready_condition(roll, obs.endpoint),
        _cond(
            "EngineBuilt",
            build.outcome == buildstate.SUCCEEDED,
            build.reason or "Building",
            build.message or "no build job yet",
        ),
        available_condition(roll, obs.serving_hash),
        _cond("Progressing", *progress),
        _cond("Degraded", True, *found[0]) if found else _cond("Degraded", False, "AsExpected", ""),
    ]
    return {
        "phase": phase,
        "message": found[0][1] if found else progress[2],
        "observedGeneration": obs.generation,
        "engineHash": build.engine_hash,
        "servingEngineHash": obs.serving_hash,
        "buildJob": build.job_name,
        "buildStep": build.step,
        "buildProgress": build.progress,
        "replicas": roll.replicas if roll else 0,
        "readyReplicas": roll.ready if roll else 0,
        "endpoint": obs.endpoint if roll else None,
        "conditions": conditions,
    }


def merge_conditions(
    old: list[dict[str, Any]], new: list[dict[str, Any]], now: datetime.datetime, generation: int
) -> list[dict[str, Any]]:
    """lastTransitionTime changes only when a condition's status does: an unchanged status is not rewritten."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        before = previous.get(cond["type"], {})
        changed = before.get("status") != cond["status"]
        stamp = (
            now.strftime("%Y-%m-%dT%H:%M:%SZ")
            if changed or "lastTransitionTime" not in before
            else before["lastTransitionTime"]
        )
        out.append({**cond, "lastTransitionTime": stamp, "observedGeneration": generation})
    return out


def with_times(old_status: dict[str, Any], new_status: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    merged = dict(new_status)
    merged["conditions"] = merge_conditions(
        old_status.get("conditions") or [], new_status["conditions"], now, new_status["observedGeneration"]
    )
    return merged


def changed(old_status: dict[str, Any], new_status: dict[str, Any]) -> bool:
    return any(old_status.get(k) != v for k, v in new_status.items())
