"""Load-aware readiness: a pod near its stream capacity stops being ready for NEW connections, so the
Service (and any gateway that follows endpoints) sends new clients to replicas with room, and is ready again
once enough streams have finished. Pure: the caller feeds it the admitted stream count.

Hysteresis keeps it from flapping: not ready at `high` streams or more, ready again only at `low` or fewer;
in between the previous answer stands. Readiness is not admission: an admitted stream keeps its place, and a
client that reaches a not-ready pod anyway (a proxy's stale endpoint list) is still admitted up to the hard
limit, then refused with 1013 / 503 + Retry-After. Liveness (/healthz) never depends on load.

Defaults: high = the stream limit (the pod is full), low = high - max(1, 10% of it). Drain and loading are
always not ready.

The policy is off unless asked for (ORPHEUS_LOAD_AWARE_READINESS; the operator's spec.runtime.loadAwareReadiness):
a full pod would count as unhealthy to PodDisruptionBudgets, rollouts and alerts (docs/deploy.md, load-aware
routing, says why and when to turn it on).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Watermarks:
    high: int  # not ready at this many admitted streams or more
    low: int  # ready again at this many or fewer

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError(f"watermarks need 0 <= low < high, got low={self.low} high={self.high}")


def watermarks(stream_limit: int, high_fraction: float = 1.0, gap_fraction: float = 0.1) -> Watermarks:
    """Watermarks for a pod admitting `stream_limit` streams: high at `high_fraction` of it (at least 1),
    low `gap_fraction` of it below (at least one stream below)."""
    high = max(1, min(stream_limit, round(stream_limit * high_fraction)))
    low = max(0, high - max(1, round(stream_limit * gap_fraction)))
    return Watermarks(high, low)


@dataclass
class LoadReadiness:
    """The load half of /readyz: `update(active)` after every admit and release, `ready` in the probe."""

    marks: Watermarks
    ready: bool = True

    def update(self, active: int) -> bool:
        if active >= self.marks.high:
            self.ready = False
        elif active <= self.marks.low:
            self.ready = True
        return self.ready


def readiness_status(*, draining: bool, loaded: bool, failed: bool, load_ready: bool) -> str:
    """The /readyz status word: "ready" is the only one answered with 200."""
    if draining:
        return "draining"
    if failed:
        return "failed"
    if not loaded:
        return "loading"
    return "ready" if load_ready else "full"
