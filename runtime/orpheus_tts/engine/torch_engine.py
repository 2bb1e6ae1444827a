"""The PyTorch engine: continuous batching over fixed slots, decoded by one background thread.

Three parts, as in nano-vllm: scheduler.py decides which requests run and what their ids mean (pure),
model_runner.py owns the model and the device and runs a step, and this module owns the thread and the bridge
to asyncio. A step reads: schedule -> run -> update -> flush.

Threads: the asyncio loop owns the streams; one compute thread owns the runner and the scheduler (torch
releases the GIL while it computes, so the loop stays responsive). They talk through a thread-safe inbox (new
requests, cancels) one way and `loop.call_soon_threadsafe` the other way, once per step for all slots.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import (
    EngineError,
    EngineOccupancy,
    EngineStats,
    GenerationRequest,
    validate_request,
)
from orpheus_tts.engine.model_runner import ModelRunner, resolve_device
from orpheus_tts.engine.scheduler import END, Request, Scheduler
from orpheus_tts.model.model_spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request(Request):
    """A scheduler request with where its output goes; the loop side only reads `queue` and `loop`."""

    queue: asyncio.Queue = field(kw_only=True)
    loop: asyncio.AbstractEventLoop = field(kw_only=True)


class _Stream:
    """The async iterator `submit` returns. The engine never references it, so when a caller drops it
    (e.g. `break` out of `async for`), it is collected and `__del__` cancels the request."""

    def __init__(self, engine: TorchEngine, request: _Request | None, error: EngineError | None = None) -> None:
        self._engine, self._request, self._error, self._done = engine, request, error, False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> list[int]:
        if self._error is not None:
            self._done = True
            raise self._error
        if self._done or self._request is None:
            raise StopAsyncIteration
        try:
            item = await self._request.queue.get()
        except asyncio.CancelledError:
            self._finish()
            raise
        if item is END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, EngineError):
            self._done = True
            raise item
        return item

    def _finish(self) -> None:
        if not self._done and self._request is not None:
            self._done = True
            self._engine.cancel_request(self._request)

    async def aclose(self) -> None:
        self._finish()

    def __del__(self) -> None:
        self._finish()


class TorchEngine:
    runner: ModelRunner  # built by start()

    def __init__(self, model_dir: str | pathlib.Path, cfg: RuntimeConfig, spec: ModelSpec) -> None:
        self.model_dir = pathlib.Path(model_dir)
        self.cfg, self.spec = cfg, spec
        self.device, self.dtype = resolve_device(cfg.device, cfg.dtype)  # bad settings fail here, not in start
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: dict[str, _Request] = {}  # submitted and not finished, under _lock
        self._n_active = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._fatal: str | None = None
        # Owned by the engine thread after start().
        self.scheduler: Scheduler[_Request] = Scheduler(cfg.max_batch_size, frozenset(spec.stop_ids),
                                                        spec.codes_per_frame)  # fmt: skip

    @property
    def capacity(self) -> int:
        return self.cfg.max_batch_size

    def occupancy(self) -> EngineOccupancy:
        with self._lock:
            live = len(self._live)
        active = min(self._n_active, live)
        return EngineOccupancy(active=active, queued=live - active, capacity=self.capacity)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self.runner = await asyncio.to_thread(ModelRunner, self.model_dir, self.cfg, self.spec, self.device,
                                              self.dtype)  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="torch-engine", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        with self._lock:
            leftover, self._live = list(self._live.values()), {}
        for r in leftover:
            self._post(r.loop, [(r, EngineError("engine closed", "closed"))])

    # -- requests (event-loop side) -----------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> _Stream:
        try:
            req = self._make_request(request)
        except EngineError as e:
            return _Stream(self, None, e)
        with self._lock:
            duplicate = req.id in self._live
            if not duplicate:
                self._live[req.id] = req
        if duplicate:
            return _Stream(self, None, EngineError(f"request id {req.id!r} is already running", "duplicate_request"))
        self._inbox.put(req)
        return _Stream(self, req)

    def _make_request(self, request: GenerationRequest) -> _Request:
        if self._fatal is not None:
            raise EngineError(f"engine stopped after an internal error: {self._fatal}", "engine")
        if self._thread is None or self._stopping:
            raise EngineError("engine is not running", "not_running")
        validate_request(request, self.cfg.max_input_len, self.cfg.max_output_len, self.spec.shape.vocab_size)
        p = request.params
        # Unseeded requests get a random seed: the same sampling path either way.
        seed = secrets.randbits(32) if p.seed is None else p.seed
        return _Request(request.request_id, list(request.prompt_ids), p, seed, queue=asyncio.Queue(),
                        loop=asyncio.get_running_loop())  # fmt: skip

    def cancel(self, request_id: str) -> None:
        with self._lock:
            req = self._live.get(request_id)
        if req is not None:
            self.cancel_request(req)

    def cancel_request(self, req: _Request) -> None:
        """Thread-safe; the engine thread frees the slot before its next step."""
        req.cancelled = True
        self._inbox.put(None)  # wakes the engine thread if it sleeps

    # -- the compute thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self.runner.on_this_thread():
                while not self._stopping:
                    self._take_inbox(block=not self.scheduler.has_work())
                    self.scheduler.drop_cancelled()
                    self._flush()
                    if self.scheduler.has_work():
                        self._step()
        except BaseException as e:  # a bug here must not leave every stream waiting forever
            log.exception("torch engine thread failed")
            self._fatal = f"{type(e).__name__}: {e}"
            self._take_inbox(block=False)  # requests submitted before _fatal was visible fail too
            self.scheduler.fail_all(EngineError(f"engine failed: {self._fatal}", "engine"))
            self._flush()

    def _take_inbox(self, block: bool) -> None:
        item = self._inbox.get() if block else None
        while True:
            if isinstance(item, _Request):
                self.scheduler.add(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        out = self.runner.run(batch)
        for r, error in out.failed:  # a failed prefill or decode ends its own requests only
            self.scheduler.finish(r, error)
        self.scheduler.update(out.requests, out.ids)
        self.stats.prefill_gpu_seconds += out.prefill_gpu_s
        self.stats.decode_gpu_seconds += out.decode_gpu_s
        self._n_active = len(self.scheduler.active)
        self._flush()
        self.stats.steps += 1
        self.stats.step_seconds += time.perf_counter() - started

    def _flush(self) -> None:
        """Hands the ready requests' ids and ends to their event loops: one callback per loop per step. A
        finished request's id is free again before its end is posted."""
        output = self.scheduler.take_output()
        with self._lock:
            for r, _ in output:
                if r.final is not None and self._live.get(r.id) is r:
                    del self._live[r.id]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any]]] = {}
        for r, item in output:
            by_loop.setdefault(r.loop, []).append((r, item))
        for loop, items in by_loop.items():
            self._post(loop, items)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[_Request, Any]]) -> None:
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _deliver(items: list[tuple[_Request, Any]]) -> None:
    for r, item in items:
        r.queue.put_nowait(item)
