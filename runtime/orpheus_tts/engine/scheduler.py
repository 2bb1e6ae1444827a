"""Which requests run in the next engine step, and what their generated ids mean (pure: no torch, no threads).

The torch engine's thread owns one `Scheduler`. Requests wait in arrival order (FIFO) for one of `capacity`
slots; a slot is the request's row in the KV cache and the sampler. A step prefills the requests admitted
into free slots and decodes one token for every request already running. Each new id then either ends the
request (a stop id, which is never handed over; or `max_tokens` reached) or joins its pending ids, which go
out a whole audio frame (`deliver_every` = 7 ids) at a time: its consumer can use nothing smaller, and at
hundreds of streams waking every stream's task at every step is what the event loop would spend its time on.

A request ends with one final item: `END` (finished normally, or cancelled) or the `EngineError` that failed
it. Its slot is free at once, for the next step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from orpheus_tts.engine.interface import EngineError, SamplingParams

END = object()  # final item: the request finished normally (or was cancelled)


@dataclass(eq=False)
class Request:
    """One generation request. `cancelled` may be set from another thread; the scheduler's thread owns the
    rest."""

    id: str
    prompt: list[int]
    params: SamplingParams  # validated
    seed: int  # params.seed, or a random one: the same sampling path either way
    cancelled: bool = False
    slot: int = -1  # -1: not holding a slot (waiting, or finished)
    generated: int = 0
    tokens: list[int] = field(default_factory=list)  # generated, not yet handed over
    final: Any = None  # END or an EngineError, once finished


R = TypeVar("R", bound=Request)  # the engine's own requests (with where their output goes)


@dataclass
class Batch(Generic[R]):
    """One step's work: prompts to prefill into their new slots, and requests to decode one token for."""

    prefill: list[R]
    decode: list[R]


class Scheduler(Generic[R]):
    def __init__(self, capacity: int, stop_ids: frozenset[int], deliver_every: int) -> None:
        self.stop_ids, self.deliver_every = stop_ids, deliver_every
        self.pending: deque[R] = deque()
        self.active: dict[int, R] = {}  # slot -> request
        self.free: list[int] = list(range(capacity))[::-1]
        self._ready: dict[int, R] = {}  # id(r) -> r, with ids or a final item to hand over

    def add(self, r: R) -> None:
        self.pending.append(r)

    def has_work(self) -> bool:
        return bool(self.active or self.pending)

    def drop_cancelled(self) -> None:
        """Ends cancelled requests, running or waiting (their final item is END)."""
        for r in [r for r in self.active.values() if r.cancelled]:
            self.finish(r, END)
        if any(r.cancelled for r in self.pending):
            for r in [r for r in self.pending if r.cancelled]:
                self.finish(r, END)
            self.pending = deque(r for r in self.pending if not r.cancelled)

    def schedule(self) -> Batch[R]:
        """Admits waiting requests into free slots, in arrival order; the running ones decode."""
        decode = list(self.active.values())
        admitted = []
        while self.free and self.pending:
            r = self.pending.popleft()
            r.slot = self.free.pop()
            self.active[r.slot] = r
            admitted.append(r)
        return Batch(admitted, decode)

    def update(self, requests: list[R], ids: list[int]) -> None:
        """One new id per request, from the step that ran them: a stop id or the request's `max_tokens`-th id
        ends it; other ids wait until a whole frame (`deliver_every`) can go out. (One loop, no call per id:
        at 400 streams this runs 400 times a step, on the thread the GPU waits for.)"""
        stop_ids, deliver_every, ready = self.stop_ids, self.deliver_every, self._ready
        for r, tok in zip(requests, ids, strict=True):
            if r.slot < 0:  # finished by an error earlier in this step
                continue
            r.generated += 1
            if tok in stop_ids:
                self.finish(r, END)
                continue
            r.tokens.append(tok)
            if r.generated >= r.params.max_tokens:
                self.finish(r, END)
            elif len(r.tokens) >= deliver_every:
                ready[id(r)] = r

    def finish(self, r: R, last: Any) -> None:
        """Frees r's slot at once (the next step may reuse it) and queues its final item."""
        if r.slot >= 0:
            self.active.pop(r.slot, None)
            self.free.append(r.slot)
            r.slot = -1
        r.final = last
        self._ready[id(r)] = r

    def fail_all(self, error: EngineError) -> None:
        """Ends every running and waiting request with `error` (the engine cannot go on)."""
        for r in [*self.active.values(), *self.pending]:
            self.finish(r, error)

    def take_output(self) -> list[tuple[R, Any]]:
        """What to hand over since the last call, in order: (request, list of ids) and (request, final item)."""
        out: list[tuple[R, Any]] = []
        ready, self._ready = self._ready, {}
        for r in ready.values():
            if r.tokens:
                out.append((r, r.tokens))
                r.tokens = []
            if r.final is not None:
                out.append((r, r.final))
        return out
