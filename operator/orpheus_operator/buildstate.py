"""Where the engine build for one hash stands, read from its Jobs and their pods. Pure functions.

Jobs are named <name>-build-<hash>-<attempt>; the latest attempt decides. A failed attempt is followed,
after an exponential backoff, by the next one: the cluster (Job names and Failed times) is the only memory.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

from orpheus_operator import crd
from orpheus_operator.config import OperatorConfig

RUNNING, SUCCEEDED, FAILED, MISSING = "Running", "Succeeded", "Failed", "Missing"

# `orpheus-tts build-engine` exit codes -> status reasons. The codes' home is runtime/orpheus_tts/build/exit_codes.py
# (ExitCode), which the operator image does not ship: tests/test_contracts.py ties this table to it. 137 is the
# kernel's (128 + SIGKILL), not build-engine's.
EXIT_REASONS: dict[int, str] = {
    1: "BuildFailed",
    2: "InvalidBuildArguments",
    3: "HubUnauthorized",
    4: "ModelNotFound",
    5: "DiskFull",
    6: "NoGPU",
    7: "GPUUnsupported",
    8: "BuildLocked",
    9: "NetworkError",
    10: "TensorRTLLMUnavailable",
    11: "EngineNotServable",
    137: "Killed",
}
JOB_REASONS = {"DeadlineExceeded": "BuildDeadlineExceeded", "BackoffLimitExceeded": "BuildFailed"}
# Container waiting reasons that mean the build pod cannot start until someone fixes something.
STUCK_REASONS = {
    "CreateContainerConfigError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerError",
}
MAX_MESSAGE = 400
# `orpheus-tts build-engine` reports progress on stderr as `build-engine: [<step> <percent>%] <message>`
# (runtime/orpheus_tts/build/build_engine.py, Reporter.phase); the operator reads the build pod's log tail.
# tests/test_contracts.py parses what Reporter prints.
PROGRESS_LINE = re.compile(r"^build-engine: \[(?P<step>[\w-]+) (?P<percent>\d+)%\] (?P<message>.*)$")
# Job controller Events that mean it cannot create the build pod (admission, quota, invalid template).
CREATE_FAILURES = {"FailedCreate"}


@dataclass(frozen=True)
class BuildState:
    engine_hash: str
    outcome: str  # Running | Succeeded | Failed | Missing
    attempt: int = 0  # of the latest Job; 0 when there is none
    job_name: str | None = None
    reason: str = ""
    message: str = ""
    retry_at: datetime.datetime | None = None  # when Failed: the next attempt is due then
    step: str = ""  # what the build reports doing (download, quantize, build, ...)
    progress: str = ""  # "35%"


@dataclass(frozen=True)
class Progress:
    step: str
    percent: int
    message: str


def parse_progress(log: str) -> Progress | None:
    """The last progress line in a build pod's log."""
    for line in reversed((log or "").splitlines()):
        m = PROGRESS_LINE.match(line.strip())
        if m:
            return Progress(m["step"], int(m["percent"]), m["message"])
    return None


def create_failure(events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The newest Event saying the Job controller cannot create the build pod, if any."""
    failures = [e for e in events if e.get("type") == "Warning" and e.get("reason") in CREATE_FAILURES]
    if not failures:
        return None
    newest = max(failures, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return newest["reason"], _one_line(newest.get("message", ""))


def attempt_of(job: dict[str, Any]) -> int:
    try:
        return int(job["metadata"].get("labels", {}).get(crd.ATTEMPT_LABEL, "0"))
    except ValueError:
        return 0


def hash_of(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("labels", {}).get(crd.HASH_LABEL)


def latest_job(jobs: list[dict[str, Any]], engine_hash: str) -> dict[str, Any] | None:
    mine = [j for j in jobs if hash_of(j) == engine_hash]
    return max(mine, key=attempt_of) if mine else None


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_outcome(job: dict[str, Any]) -> str:
    if _condition(job, "Complete"):
        return SUCCEEDED
    if _condition(job, "Failed"):
        return FAILED
    return RUNNING


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _one_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""  # build_engine's last line is its one-line human message
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != "build":
            continue
        for key in ("state", "lastState"):
            term = (status.get(key) or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                return term
    return None


def _newest_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def explain_failure(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    """(reason, message) of a failed build: from the build container's exit code and termination message
    (build_engine writes its reason there), else from the Job's Failed condition."""
    failed = _condition(job, "Failed") or {}
    job_reason = failed.get("reason", "")
    name = job["metadata"]["name"]
    if job_reason == "DeadlineExceeded":
        detail = failed.get("message", "")
        return JOB_REASONS[job_reason], f"job {name} ran past build.deadlineSeconds: {detail}".strip()
    for pod in _newest_first(pods):
        term = _terminated(pod)
        if term is None:
            continue
        code = int(term.get("exitCode", 1))
        reason = "OutOfMemory" if term.get("reason") == "OOMKilled" else EXIT_REASONS.get(code, "BuildFailed")
        text = _one_line(term.get("message", "")) or term.get("reason") or "no message"
        return reason, f"{text} (exit code {code}, job {name})"
    return JOB_REASONS.get(job_reason, "BuildFailed"), f"job {name} failed: {failed.get('message') or job_reason}"


def stuck_pod(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """A build pod that cannot start (missing Secret, image pull error, unschedulable), if any."""
    for pod in _newest_first(pods):
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = waiting.get("message") or waiting["reason"]
                return waiting["reason"], f"pod {pod['metadata']['name']}: {detail}"
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
                return cond["reason"], f"pod {pod['metadata']['name']}: {cond.get('message', '')}".strip()
    return None


def building(engine_hash: str, attempt: int, job_name: str) -> BuildState:
    return BuildState(
        engine_hash,
        RUNNING,
        attempt,
        job_name,
        "Building",
        f"job {job_name} is building engine {engine_hash} (attempt {attempt})",
    )


def retry_delay(attempt: int, cfg: OperatorConfig) -> float:
    return min(cfg.build_retry_base_seconds * 2 ** max(attempt - 1, 0), cfg.build_retry_max_seconds)


def evaluate(
    engine_hash: str,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    cfg: OperatorConfig,
    events: list[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> BuildState:
    """The state of the build of `engine_hash` given its latest Job (or None), that Job's pods, the Job's Events
    (read when it has no pod) and the progress its pod last reported."""
    if job is None:
        return BuildState(engine_hash, MISSING)
    name, attempt = job["metadata"]["name"], attempt_of(job)
    outcome = job_outcome(job)
    if outcome == SUCCEEDED:
        message = f"engine {engine_hash} built by job {name}"
        return BuildState(engine_hash, SUCCEEDED, attempt, name, "Built", message, step="Done", progress="100%")
    if outcome == RUNNING:
        stuck = stuck_pod(pods) or (None if pods else create_failure(events or []))
        if stuck:
            return BuildState(engine_hash, RUNNING, attempt, name, *stuck, step="Pending")
        state = building(engine_hash, attempt, name)
        if progress is None:
            return state
        message = f"{state.message}: {progress.step} {progress.percent}% {progress.message}".strip()
        return BuildState(
            engine_hash,
            RUNNING,
            attempt,
            name,
            state.reason,
            message,
            step=progress.step,
            progress=f"{progress.percent}%",
        )
    reason, message = explain_failure(job, pods)
    failed_at = parse_time((_condition(job, "Failed") or {}).get("lastTransitionTime")) or parse_time(
        job["metadata"].get("creationTimestamp")
    )
    retry_at = failed_at + datetime.timedelta(seconds=retry_delay(attempt, cfg)) if failed_at else None
    return BuildState(engine_hash, FAILED, attempt, name, reason, message, retry_at, step="Failed")


def retry_due(state: BuildState, now: datetime.datetime) -> bool:
    return state.outcome == FAILED and (state.retry_at is None or now >= state.retry_at)


def stale_jobs(jobs: list[dict[str, Any]], keep: dict[str, int]) -> list[dict[str, Any]]:
    """Jobs to delete: those of hashes no longer wanted or served, and older attempts of a kept hash.
    `keep` maps a hash to the attempt to keep (the latest)."""
    return [j for j in jobs if hash_of(j) not in keep or attempt_of(j) < keep[hash_of(j) or ""]]
