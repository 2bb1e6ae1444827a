"""Build Jobs and their pods -> where the build stands, why it failed, when to retry."""

from __future__ import annotations

import datetime

import pytest

from orpheus_operator import buildstate, crd
from orpheus_operator.config import OperatorConfig

CFG = OperatorConfig(build_retry_base_seconds=10, build_retry_max_seconds=35)
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def job(h: str = "abc", attempt: int = 1, condition: str | None = None, reason: str = "", message: str = "") -> dict:
    status = {}
    if condition:
        status["conditions"] = [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    return {
        "metadata": {
            "name": f"v-build-{h}-{attempt}",
            "creationTimestamp": "2025-12-31T23:00:00Z",
            "labels": {crd.HASH_LABEL: h, crd.ATTEMPT_LABEL: str(attempt)},
        },
        "status": status,
    }


def pod(name: str = "p1", created: str = "2026-01-01T00:00:00Z", **state: dict) -> dict:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"containerStatuses": [{"name": "build", "state": state}]},
    }


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (3, "HubUnauthorized"),
        (4, "ModelNotFound"),
        (5, "DiskFull"),
        (6, "NoGPU"),
        (7, "GPUUnsupported"),
        (10, "TensorRTLLMUnavailable"),
        (1, "BuildFailed"),
        (42, "BuildFailed"),
    ],
)
def test_failure_reason_comes_from_the_exit_code(code: int, reason: str) -> None:
    term = {"terminated": {"exitCode": code, "message": "downloading...\nrepo x: token rejected\n"}}
    state = buildstate.evaluate("abc", job(condition="Failed", reason="BackoffLimitExceeded"), [pod(**term)], CFG)
    assert state.outcome == buildstate.FAILED
    assert state.reason == reason
    assert state.message == f"repo x: token rejected (exit code {code}, job v-build-abc-1)"


def test_newest_pod_explains_and_oom_is_named() -> None:
    old = pod("old", "2026-01-01T00:00:00Z", terminated={"exitCode": 4, "message": "not found"})
    new = pod("new", "2026-01-01T00:05:00Z", terminated={"exitCode": 137, "reason": "OOMKilled"})
    reason, message = buildstate.explain_failure(job(condition="Failed"), [old, new])
    assert reason == "OutOfMemory" and "OOMKilled" in message and "137" in message


def test_deadline_and_podless_failures_use_the_job_condition() -> None:
    assert (
        buildstate.explain_failure(job(condition="Failed", reason="DeadlineExceeded", message="too slow"), [])[0]
        == "BuildDeadlineExceeded"
    )
    reason, message = buildstate.explain_failure(
        job(condition="Failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit"),
        [],
    )
    assert reason == "BuildFailed" and "backoff limit" in message


def test_running_succeeded_missing() -> None:
    assert buildstate.evaluate("abc", None, [], CFG).outcome == buildstate.MISSING
    running = buildstate.evaluate("abc", job(), [], CFG)
    assert (running.outcome, running.reason, running.attempt) == (buildstate.RUNNING, "Building", 1)
    done = buildstate.evaluate("abc", job(condition="Complete"), [], CFG)
    assert done.outcome == buildstate.SUCCEEDED and done.job_name == "v-build-abc-1"


def test_a_pod_that_cannot_start_is_reported() -> None:
    stuck = pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'})
    state = buildstate.evaluate("abc", job(), [stuck], CFG)
    assert state.outcome == buildstate.RUNNING
    assert (state.reason, state.message) == ("CreateContainerConfigError", 'pod p1: secret "hf" not found')
    unschedulable = {
        "metadata": {"name": "p2"},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: no GPU"}
            ]
        },
    }
    assert buildstate.stuck_pod([unschedulable]) == ("Unschedulable", "pod p2: 0/3 nodes: no GPU")


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    assert [buildstate.retry_delay(a, CFG) for a in (1, 2, 3, 4)] == [10, 20, 35, 35]
    state = buildstate.evaluate("abc", job(attempt=2, condition="Failed"), [], CFG)
    assert state.retry_at == T0 + datetime.timedelta(seconds=20)
    assert not buildstate.retry_due(state, T0 + datetime.timedelta(seconds=19))
    assert buildstate.retry_due(state, T0 + datetime.timedelta(seconds=20))


def test_latest_attempt_decides_and_stale_jobs_go() -> None:
    jobs = [job("abc", 1, "Failed"), job("abc", 2), job("old", 1, "Complete"), job("older", 3, "Complete")]
    assert buildstate.latest_job(jobs, "abc")["metadata"]["name"] == "v-build-abc-2"
    assert buildstate.latest_job(jobs, "nope") is None
    stale = buildstate.stale_jobs(jobs, {"abc": 2, "old": 1})
    assert [j["metadata"]["name"] for j in stale] == ["v-build-abc-1", "v-build-older-3"]
