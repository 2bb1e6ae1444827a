"""Phase and conditions from the build state and the Deployment."""

from __future__ import annotations

import datetime

from orpheus_operator import buildstate, status
from orpheus_operator.buildstate import BuildState
from orpheus_operator.config import OperatorConfig

CFG = OperatorConfig()

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
BUILDING = BuildState("h1", buildstate.RUNNING, 1, "v-build-h1-1", "Building", "job v-build-h1-1 is building")
BUILT = BuildState("h1", buildstate.SUCCEEDED, 1, "v-build-h1-1", "Built", "engine h1 built")
FAILED = BuildState(
    "h1", buildstate.FAILED, 1, "v-build-h1-1", "HubUnauthorized", "token rejected (exit code 3)", retry_at=T0
)


def deployment(
    replicas: int = 2,
    updated: int = 2,
    available: int = 2,
    generation: int = 3,
    observed: int = 3,
    total: int | None = None,
) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": updated if total is None else total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": available,
            "conditions": [{"type": "Available", "status": "True" if available else "False", "message": "x"}],
        },
    }


def compute(build: BuildState, dep: dict | None = None, serving: str | None = None, errors=()) -> dict:
    return status.compute(
        status.Observation(
            generation=5, build=build, endpoint="http://e", serving_hash=serving, deployment=dep, errors=list(errors)
        )
    )


def conds(st: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_building_first_engine() -> None:
    st = compute(BUILDING)
    assert st["phase"] == "Building" and st["observedGeneration"] == 5 and st["endpoint"] is None
    assert conds(st) == {
        "Ready": ("False", "NoEngine"),
        "EngineBuilt": ("False", "Building"),
        "Available": ("False", "NoEngine"),
        "Progressing": ("True", "BuildingEngine"),
        "Degraded": ("False", "AsExpected"),
    }


def test_deploying_then_ready() -> None:
    rolling = compute(BUILT, deployment(updated=1, available=1, total=2), serving="h1")
    assert rolling["phase"] == "Deploying" and conds(rolling)["Progressing"] == ("True", "RollingOut")
    assert conds(rolling)["Available"] == ("True", "MinimumReplicasAvailable")
    stale = compute(BUILT, deployment(observed=2), serving="h1")
    assert stale["phase"] == "Deploying" and "controller" in stale["message"]
    ready = compute(BUILT, deployment(), serving="h1")
    assert ready["phase"] == "Ready" and ready["readyReplicas"] == 2 and ready["endpoint"] == "http://e"
    assert conds(ready) == {
        "Ready": ("True", "Serving"),
        "EngineBuilt": ("True", "Built"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }


def test_rebuild_keeps_old_pods_available() -> None:
    st = compute(BUILDING, deployment(), serving="h0")
    assert st["phase"] == "Building" and st["servingEngineHash"] == "h0" and st["engineHash"] == "h1"
    assert conds(st)["Available"] == ("True", "MinimumReplicasAvailable")


def test_failed_build_says_why_and_when_it_retries() -> None:
    st = compute(FAILED)
    assert st["phase"] == "Failed"
    assert conds(st)["Degraded"] == ("True", "HubUnauthorized")
    assert conds(st)["EngineBuilt"] == ("False", "HubUnauthorized")
    assert st["message"] == "token rejected (exit code 3); next attempt at 2026-01-01T00:00:00Z"


def test_stuck_build_pod_is_pending_and_degraded() -> None:
    stuck = BuildState("h1", buildstate.RUNNING, 1, "j", "CreateContainerConfigError", 'secret "hf" not found')
    st = compute(stuck)
    assert st["phase"] == "Pending" and conds(st)["Degraded"] == ("True", "CreateContainerConfigError")


def test_child_rejected_while_serving_is_degraded_not_failed() -> None:
    st = compute(BUILT, deployment(), serving="h1", errors=[("ChildRejected", "Deployment voice: bad env")])
    assert st["phase"] == "Ready" and conds(st)["Degraded"] == ("True", "ChildRejected")
    assert conds(st)["Ready"] == ("True", "Serving") and "bad env" in st["message"]


def test_child_rejected_before_anything_serves_fails() -> None:
    st = compute(BUILT, None, serving="h1", errors=[("ChildRejected", "Deployment voice: bad env")])
    assert st["phase"] == "Failed" and conds(st)["Ready"] == ("False", "NoEngine")


def test_ready_needs_a_ready_pod() -> None:
    st = compute(BUILT, deployment(available=0, updated=2), serving="h1")
    assert conds(st)["Ready"] == ("False", "NotServing")


def test_build_progress_is_reported() -> None:
    progress = buildstate.Progress("quantize", 35, "calibrating 128 samples")
    job = {"metadata": {"name": "v-build-h1-1", "labels": {"tts.orpheus.dev/build-attempt": "1"}}, "status": {}}
    state = buildstate.evaluate(
        "h1", job, [{"metadata": {"name": "p"}, "status": {"phase": "Running"}}], CFG, [], progress
    )
    st = compute(state)
    assert (st["buildStep"], st["buildProgress"]) == ("quantize", "35%")
    assert "quantize 35% calibrating 128 samples" in st["message"]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    done = compute(buildstate.evaluate("h1", job, [], CFG), deployment(), serving="h1")
    assert (done["buildStep"], done["buildProgress"]) == ("Done", "100%")


def test_stalled_rollout_is_degraded() -> None:
    dep = deployment(updated=1, available=1, total=2)
    dep["status"]["conditions"].append(
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    )
    st = compute(BUILT, dep, serving="h1")
    assert st["phase"] == "Deploying" and conds(st)["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_transition_times_change_only_with_status() -> None:
    first = status.with_times({}, compute(BUILDING), T0)
    later = T0 + datetime.timedelta(minutes=5)
    again = status.with_times(first, compute(BUILDING), later)
    assert again == first and not status.changed(first, again)
    built = status.with_times(again, compute(BUILT, deployment(), serving="h1"), later)
    times = {c["type"]: c["lastTransitionTime"] for c in built["conditions"]}
    assert times["EngineBuilt"] == "2026-01-01T00:05:00Z" and times["Degraded"] == "2026-01-01T00:00:00Z"
    assert status.changed(again, built)
