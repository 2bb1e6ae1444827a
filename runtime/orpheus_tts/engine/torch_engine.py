"""The PyTorch engine: continuous batching over fixed slots, decoded by one background thread.

Threads: the asyncio loop owns the streams; one compute thread owns the model, the slots and the
scheduling (torch releases the GIL while it computes, so the loop stays responsive). They talk through
a thread-safe inbox (new requests, cancels) one way and `loop.call_soon_threadsafe` the other way, once
per step for all slots.

A step: admit queued requests into free slots (FIFO) and prefill them together, decode one token for
every slot that was already running, then ONE device->host copy of all the new ids, then the fan-out.
Ids are handed to a stream a whole audio frame (7 ids) at a time: its consumer can use nothing smaller,
and at hundreds of streams a wake-up of every stream's task at every step is what the event loop spends
its time on. The device-side work (prefill, decode, their CUDA graphs) is in step_graphs.py.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.devices import pick_device
from orpheus_tts.engine.interface import EngineError, EngineLoad, EngineStats, GenerationRequest
from orpheus_tts.engine.sampling import SlotParams, SlotSampler, output_rows
from orpheus_tts.engine.step_graphs import (
    DecodeGraphs,
    DeviceState,
    PrefillGraphs,
    decode_step,
    prefill_step,
    right_padded,
)
from orpheus_tts.model.llama import load_transformer
from orpheus_tts.model.model_spec import ModelSpec

log = logging.getLogger(__name__)

_END = object()  # stream item: the request finished normally
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """ "auto" means CUDA with bf16 when a GPU is visible, else CPU with fp32 (CPUs are slow at bf16)."""
    dev = pick_device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise EngineError(f"dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}", "config")
    return dev, _DTYPES[dtype]


@dataclass(eq=False)
class _Request:
    """Shared by both threads: the loop side only reads `queue`/`loop`, the engine thread the rest."""

    id: str
    prompt: list[int]
    params: SlotParams
    max_tokens: int
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    slot: int = -1
    generated: int = 0
    tokens: list[int] = field(default_factory=list)  # generated, not yet handed over
    final: Any = None  # _END or an EngineError, once finished


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
        if item is _END:
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
    def __init__(self, model_dir: str | pathlib.Path, cfg: RuntimeConfig, spec: ModelSpec) -> None:
        self.model_dir = pathlib.Path(model_dir)
        self.cfg, self.spec = cfg, spec
        self.device, self.dtype = resolve_device(cfg.device, cfg.dtype)
        self.max_seq = cfg.max_input_len + cfg.max_output_len
        self._stop_ids = frozenset(spec.stop_ids)
        self._deliver_every = spec.codes_per_frame
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: dict[str, _Request] = {}  # submitted and not finished, under _lock
        self._n_active = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._fatal: str | None = None
        # Owned by the engine thread after start().
        self._pending: deque[_Request] = deque()
        self._active: dict[int, _Request] = {}
        self._free: list[int] = list(range(cfg.max_batch_size))[::-1]
        self._ready: dict[int, _Request] = {}  # id(r) -> r, with ids or an end to hand over at the next flush
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self._events: list[torch.cuda.Event] | None = None  # CUDA only

    @property
    def capacity(self) -> int:
        return self.cfg.max_batch_size

    def load(self) -> EngineLoad:
        with self._lock:
            live = len(self._live)
        active = min(self._n_active, live)
        return EngineLoad(active=active, queued=live - active, capacity=self.capacity)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load_model)
        self._thread = threading.Thread(target=self._run, name="torch-engine", daemon=True)
        self._thread.start()

    def _load_model(self) -> None:
        log.info("loading %s on %s (%s), %d slots x %d positions", self.model_dir, self.device, self.dtype,
                 self.capacity, self.max_seq)  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # caches, graphs and Triton kernels on the configured GPU
        with torch.inference_mode():
            self.model = load_transformer(self.model_dir, self.spec.shape, self.device, self.dtype)
            # One extra cache row: padded batch entries (CUDA-graph buckets, warm-up) point at it.
            self.scratch_slot = self.capacity
            slots = self.capacity + 1
            try:
                self.model.setup_caches(slots, self.max_seq, attention=self._attention_kind())
            except torch.OutOfMemoryError:
                s = self.spec.shape
                per_slot = 2 * s.num_layers * s.num_kv_heads * self.max_seq * s.head_dim * self.dtype.itemsize
                gib = slots * per_slot / 2**30
                raise EngineError(f"the KV cache for {self.capacity} slots x {self.max_seq} positions needs "
                                  f"{gib:.1f} GiB, more than the device has free: lower TRTLLM_MAX_BATCH_SIZE "
                                  "or the input/output lengths", "startup") from None  # fmt: skip
            self.model.set_output_rows(output_rows(self.spec))
            self.sampler = SlotSampler(self.spec, slots, self.device)
            if self.cfg.torch_compile and self.device.type == "cuda":
                self.model.compile_ops()
                self.sampler.compile()
            self.state = DeviceState(
                last_token=torch.zeros(slots, dtype=torch.long, device=self.device),
                lengths=torch.zeros(slots, dtype=torch.long, device=self.device),
            )
            self._warm_up()
            use_graphs = self.cfg.cuda_graphs and self.device.type == "cuda"
            # Without graphs, decode the exact batch: padding would only add work.
            if use_graphs:
                self.graphs = DecodeGraphs(self.model, self.sampler, self.state, self.capacity, self.scratch_slot,
                                           capture=True)  # fmt: skip
                most = min(self.capacity, 32)  # prompts per prefill replay; more take several
                self.prefill_graphs = PrefillGraphs(self.model, self.sampler, self.state, most, self.cfg.max_input_len,
                                                    self.scratch_slot, capture=True)  # fmt: skip

    def _attention_kind(self) -> str:
        choice = self.cfg.decode_attention
        if choice == "auto":
            return "triton" if self.device.type == "cuda" else "sdpa"
        if choice not in ("sdpa", "triton") or (choice == "triton" and self.device.type != "cuda"):
            raise EngineError(f"decode_attention {choice!r} is not available on {self.device}: "
                              "use auto, sdpa, or triton (CUDA only)", "config")  # fmt: skip
        return choice

    def _warm_up(self) -> None:
        """Prefills and decodes of one and of two sequences on the scratch slot: first-call costs (kernel
        selection, Triton and torch.compile compilation, which specialises batch 1) are paid here rather
        than by the first requests."""
        for n in (1, 2):
            scratch = torch.full((n,), self.scratch_slot, device=self.device)
            tokens = torch.tensor([[self.spec.start_of_human, self.spec.bos]] * n, device=self.device)
            prefill_step(self.model, self.sampler, self.state, tokens, scratch, torch.full((n,), 2, device=self.device))
            decode_step(self.model, self.sampler, self.state, scratch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
        try:
            p = request.params.validate(self.cfg.max_output_len)
        except ValueError as e:
            raise EngineError(str(e), "invalid_request") from None
        prompt = list(request.prompt_ids)
        if not 1 <= len(prompt) <= self.cfg.max_input_len:
            raise EngineError(f"prompt has {len(prompt)} tokens; must be 1..{self.cfg.max_input_len}",
                              "invalid_request")  # fmt: skip
        vocab = self.spec.shape.vocab_size
        if any(not (isinstance(t, int) and 0 <= t < vocab) for t in prompt):
            raise EngineError(f"prompt ids must be integers in [0, {vocab})", "invalid_request")
        # Unseeded requests get a random seed: the same sampling path either way.
        seed = secrets.randbits(32) if p.seed is None else p.seed
        params = SlotParams(p.temperature, p.top_p, p.repetition_penalty, p.min_tokens, seed)
        return _Request(request.request_id, prompt, params, p.max_tokens, asyncio.Queue(), asyncio.get_running_loop())

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
        stream = None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # graphs replay and kernels launch on the engine's GPU
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            if self.cfg.engine_high_priority:
                # SNAC runs on a stream of its own: with this, its kernels fill the SMs around the decode
                # steps instead of delaying them. (Out-of-range priorities clamp to the device's highest.)
                stream = torch.cuda.Stream(self.device, priority=-100)
        try:
            with torch.inference_mode(), torch.cuda.stream(stream):
                while not self._stopping:
                    self._take_inbox(block=not self._active and not self._pending)
                    self._drop_cancelled()
                    if self._active or self._pending:
                        self._step()
        except BaseException as e:  # a bug here must not leave every stream waiting forever
            log.exception("torch engine thread failed")
            self._fatal = f"{type(e).__name__}: {e}"
            self._take_inbox(block=False)  # requests submitted before _fatal was visible fail too
            for r in [*self._active.values(), *self._pending]:
                self._finish(r, EngineError(f"engine failed: {self._fatal}", "engine"))
            self._flush()

    def _take_inbox(self, block: bool) -> None:
        item = self._inbox.get() if block else None
        while True:
            if isinstance(item, _Request):
                self._pending.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._active.values() if r.cancelled]:
            self._finish(r, _END)
        if any(r.cancelled for r in self._pending):
            for r in [r for r in self._pending if r.cancelled]:
                self._finish(r, _END)
            self._pending = deque(r for r in self._pending if not r.cancelled)
        self._flush()

    def _step(self) -> None:
        started = time.perf_counter()
        decoding = list(self._active.values())
        admitted = self._admit()
        results: list[tuple[_Request, torch.Tensor]] = []
        self._mark(0)
        if admitted:
            results += self._prefill(admitted)
        self._mark(1)
        if decoding:
            try:
                results.append((decoding, self._decode(decoding)))
            except Exception as e:  # a device error fails the batch, never the engine
                log.exception("decode step failed")
                for r in decoding:
                    self._finish(r, EngineError(f"decode failed: {type(e).__name__}: {e}", "engine"))
        self._mark(2)
        if results:
            # The one host sync of the step, for every slot at once.
            tokens = torch.cat([ids for _, ids in results]).tolist()
            reqs = [r for group, _ in results for r in group]
            for r, tok in zip(reqs, tokens, strict=True):
                self._emit(r, tok)
            if self._events is not None:  # the sync above completed them
                self.stats.prefill_gpu_seconds += self._events[0].elapsed_time(self._events[1]) / 1000
                self.stats.decode_gpu_seconds += self._events[1].elapsed_time(self._events[2]) / 1000
        self._n_active = len(self._active)
        self._flush()
        self.stats.steps += 1
        self.stats.step_seconds += time.perf_counter() - started

    def _mark(self, i: int) -> None:
        """GPU timestamps between prefill and decode (CUDA events: no sync), read after the step's sync."""
        if self._events is not None:
            self._events[i].record()

    def _decode(self, reqs: list[_Request]) -> torch.Tensor:
        if self.graphs is not None:
            return self.graphs.run([r.slot for r in reqs])
        return decode_step(self.model, self.sampler, self.state, self._slots_tensor(reqs))

    def _admit(self) -> list[_Request]:
        admitted = []
        while self._free and self._pending:
            r = self._pending.popleft()
            r.slot = self._free.pop()
            self._active[r.slot] = r
            self.sampler.reset(r.slot, r.params)
            admitted.append(r)
        return admitted

    def _prefill(self, reqs: list[_Request]) -> list[tuple[list[_Request], torch.Tensor]]:
        try:
            return [(reqs, self._prefill_batch(reqs))]
        except Exception as e:
            if len(reqs) == 1:
                log.exception("prefill failed for request %s", reqs[0].id)
                self._finish(reqs[0], EngineError(f"prefill failed: {type(e).__name__}: {e}", "engine"))
                return []
        # Retry one by one so that only the request that breaks prefill fails.
        return [res for r in reqs for res in self._prefill([r])]

    def _prefill_batch(self, reqs: list[_Request]) -> torch.Tensor:
        if self.prefill_graphs is not None:
            return self.prefill_graphs.run([r.prompt for r in reqs], [r.slot for r in reqs])
        tokens = right_padded([r.prompt for r in reqs], len(reqs), max(len(r.prompt) for r in reqs))
        lengths = torch.tensor([len(r.prompt) for r in reqs])
        slots = self._slots_tensor(reqs)
        dev = self.device
        return prefill_step(self.model, self.sampler, self.state, tokens.to(dev), slots, lengths.to(dev))

    def _slots_tensor(self, reqs: list[_Request]) -> torch.Tensor:
        return torch.tensor([r.slot for r in reqs], dtype=torch.long).to(self.device)

    def _emit(self, r: _Request, tok: int) -> None:
        if r.slot < 0:  # finished by an error earlier in this step
            return
        r.generated += 1
        if tok in self._stop_ids:
            self._finish(r, _END)
            return
        r.tokens.append(tok)
        if r.generated >= r.max_tokens:
            self._finish(r, _END)
        elif len(r.tokens) >= self._deliver_every:
            self._ready[id(r)] = r

    def _finish(self, r: _Request, last: Any) -> None:
        """Frees r's slot at once (the next step may reuse it) and queues its final item."""
        if r.slot >= 0:
            self._active.pop(r.slot, None)
            self._free.append(r.slot)
            r.slot = -1
        r.final = last
        self._ready[id(r)] = r
        with self._lock:
            if self._live.get(r.id) is r:
                del self._live[r.id]

    def _flush(self) -> None:
        """Hands the ready requests' ids and ends to their event loops: one callback per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any]]] = {}
        ready, self._ready = self._ready, {}
        for r in ready.values():
            items = by_loop.setdefault(r.loop, [])
            if r.tokens:
                items.append((r, r.tokens))
                r.tokens = []
            if r.final is not None:
                items.append((r, r.final))
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
