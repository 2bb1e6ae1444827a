"""The torch engine's device side: the model, its KV cache, the sampler, the per-slot device state, warm-up and
CUDA graphs, all built in the constructor; `run(batch)` prefills and decodes one scheduled step.

Slot i of the scheduler is row i of the KV cache and the sampler; one extra row, the scratch slot, takes the
padding entries of bucketed batches (CUDA graphs) and the warm-up. The steps themselves and their graphs are
in step_graphs.py.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic

import torch

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.devices import pick_device
from orpheus_tts.engine.interface import EngineError
from orpheus_tts.engine.sampling import SlotParams, SlotSampler, output_rows
from orpheus_tts.engine.scheduler import Batch, R
from orpheus_tts.engine.step_graphs import (
    DecodeGraphs,
    DeviceState,
    PrefillGraphs,
    decode_step,
    prefill_step,
    right_padded,
)
from orpheus_tts.model import kv_quant
from orpheus_tts.model.llama import load_transformer
from orpheus_tts.model.model_spec import ModelSpec

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """ "auto" means CUDA with bf16 when a GPU is visible, else CPU with fp32 (CPUs are slow at bf16)."""
    dev = pick_device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise EngineError(f"dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}", "config")
    return dev, _DTYPES[dtype]


@dataclass
class StepOutput(Generic[R]):
    """A step's new ids (one per request that ran), the requests that failed, and the GPU time of its prefill
    and decode (CUDA events; 0 on CPU)."""

    requests: list[R]
    ids: list[int]
    failed: list[tuple[R, EngineError]]
    prefill_gpu_s: float = 0.0
    decode_gpu_s: float = 0.0


def check_fp8_support(cfg: RuntimeConfig, device: torch.device) -> None:
    """FP8 (KV cache or projections) needs FP8 tensor cores on CUDA (sm89+: Ada, Hopper); a CPU emulates it
    (tests). Refused at startup with a clear message rather than failing inside the first step."""
    wants = [name for name, value in (("ORPHEUS_KV_CACHE_DTYPE", cfg.kv_cache_dtype),
                                      ("ORPHEUS_LINEAR_DTYPE", cfg.linear_dtype)) if value == "fp8"]  # fmt: skip
    if wants and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise EngineError(f"{' and '.join(wants)}=fp8 needs an Ada or Hopper GPU (sm89+), not {name}; "
                          "use int8 for the KV cache", "config")  # fmt: skip


class ModelRunner:
    def __init__(self, model_dir: pathlib.Path, cfg: RuntimeConfig, spec: ModelSpec, device: torch.device,
                 dtype: torch.dtype) -> None:  # fmt: skip
        """Loads the weights and builds everything a step needs: seconds to minutes of blocking work."""
        self.cfg, self.spec = cfg, spec
        self.device, self.dtype = device, dtype
        self.capacity = cfg.max_batch_size
        self.max_seq = cfg.max_input_len + cfg.max_output_len
        self.scratch_slot = self.capacity  # one extra cache row: padded batch entries point at it
        slots = self.capacity + 1
        log.info("loading %s on %s (%s), %d slots x %d positions, KV cache %s, projections %s",
                 model_dir, self.device, self.dtype, self.capacity, self.max_seq, cfg.kv_cache_dtype,
                 cfg.linear_dtype)  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # caches, graphs and Triton kernels on the configured GPU
        check_fp8_support(cfg, self.device)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self._events: list[torch.cuda.Event] | None = None  # CUDA only, created on the engine thread
        with torch.inference_mode():
            self.model = load_transformer(model_dir, spec.shape, self.device, self.dtype, cfg.linear_dtype)
            self._allocate_kv_cache(slots)
            self.model.set_output_rows(output_rows(spec))
            self.sampler = SlotSampler(spec, slots, self.device)
            if cfg.torch_compile and self.device.type == "cuda":
                self.model.compile_ops()
                self.sampler.compile()
            self.state = DeviceState(
                last_token=torch.zeros(slots, dtype=torch.long, device=self.device),
                lengths=torch.zeros(slots, dtype=torch.long, device=self.device),
            )
            self._warm_up()
            # Without graphs, decode the exact batch: padding would only add work.
            if cfg.cuda_graphs and self.device.type == "cuda":
                self.graphs = DecodeGraphs(self.model, self.sampler, self.state, self.capacity, self.scratch_slot,
                                           capture=True)  # fmt: skip
                most = min(self.capacity, 32)  # prompts per prefill replay; more take several
                self.prefill_graphs = PrefillGraphs(self.model, self.sampler, self.state, most, cfg.max_input_len,
                                                    self.scratch_slot, capture=True)  # fmt: skip

    def _allocate_kv_cache(self, slots: int) -> None:
        """The KV cache, `slots` rows of max_seq positions: the engine's largest allocation."""
        try:
            self.model.setup_caches(slots, self.max_seq, attention=self._attention_kind(),
                                    kv_cache_dtype=self.cfg.kv_cache_dtype)  # fmt: skip
        except torch.OutOfMemoryError:
            s = self.spec.shape
            itemsize = kv_quant.storage_dtype(self.cfg.kv_cache_dtype, self.dtype).itemsize
            per_slot = 2 * s.num_layers * s.num_kv_heads * self.max_seq * s.head_dim * itemsize
            gib = slots * per_slot / 2**30
            raise EngineError(f"the KV cache for {self.capacity} slots x {self.max_seq} positions needs "
                              f"{gib:.1f} GiB, more than the device has free: lower TRTLLM_MAX_BATCH_SIZE "
                              "or the input/output lengths", "startup") from None  # fmt: skip

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

    @contextlib.contextmanager
    def on_this_thread(self) -> Iterator[None]:
        """The device context of the thread that runs the steps: the engine's GPU, inference mode and (with
        `engine_high_priority`) a high-priority CUDA stream."""
        stream = None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # graphs replay and kernels launch on the engine's GPU
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            if self.cfg.engine_high_priority:
                # SNAC runs on a stream of its own: with this, its kernels fill the SMs around the decode
                # steps instead of delaying them. (Out-of-range priorities clamp to the device's highest.)
                stream = torch.cuda.Stream(self.device, priority=-100)
        with torch.inference_mode(), torch.cuda.stream(stream):
            yield

    # -- a step ---------------------------------------------------------------------------------------------

    def run(self, batch: Batch[R]) -> StepOutput[R]:
        """Prefills `batch.prefill` into their slots and decodes one token for `batch.decode`, then ONE
        device->host copy of all the new ids. A failure fails its requests only (see `failed`)."""
        for r in batch.prefill:  # the admitted requests' settings into their new slots
            p = r.params
            self.sampler.reset(r.slot, SlotParams(p.temperature, p.top_p, p.repetition_penalty, p.min_tokens, r.seed))
        results: list[tuple[list[R], torch.Tensor]] = []
        failed: list[tuple[R, EngineError]] = []
        self._mark(0)
        if batch.prefill:
            results += self._prefill(batch.prefill, failed)
        self._mark(1)
        if batch.decode:
            try:
                results.append((batch.decode, self.decode([r.slot for r in batch.decode])))
            except Exception as e:  # a device error fails the batch, never the engine
                log.exception("decode step failed")
                failed += [(r, EngineError(f"decode failed: {type(e).__name__}: {e}", "engine")) for r in batch.decode]
        self._mark(2)
        out: StepOutput[R] = StepOutput([], [], failed)
        if results:
            # The one host sync of the step, for every slot at once. A step of one group (decode only, as
            # most are) needs no joining copy.
            single = len(results) == 1
            out.ids = (results[0][1] if single else torch.cat([ids for _, ids in results])).tolist()
            out.requests = results[0][0] if single else [r for group, _ in results for r in group]
            if self._events is not None:  # the sync above completed them
                out.prefill_gpu_s = self._events[0].elapsed_time(self._events[1]) / 1000
                out.decode_gpu_s = self._events[1].elapsed_time(self._events[2]) / 1000
        return out

    def _mark(self, i: int) -> None:
        """GPU timestamps between prefill and decode (CUDA events: no sync), read after the step's sync."""
        if self._events is not None:
            self._events[i].record()

    def _prefill(self, reqs: list[R], failed: list[tuple[R, EngineError]]) -> list[tuple[list[R], torch.Tensor]]:
        try:
            return [(reqs, self.prefill([r.prompt for r in reqs], [r.slot for r in reqs]))]
        except Exception as e:
            if len(reqs) == 1:
                log.exception("prefill failed for request %s", reqs[0].id)
                failed.append((reqs[0], EngineError(f"prefill failed: {type(e).__name__}: {e}", "engine")))
                return []
        # Retry one by one so that only the request that breaks prefill fails.
        return [res for r in reqs for res in self._prefill([r], failed)]

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Prompts into fresh slots; each one's first generated token (on the device)."""
        if self.prefill_graphs is not None:
            return self.prefill_graphs.run(prompts, slots)
        tokens = right_padded(prompts, len(prompts), max(len(p) for p in prompts))
        lengths = torch.tensor([len(p) for p in prompts])
        dev = self.device
        return prefill_step(self.model, self.sampler, self.state, tokens.to(dev), self._slots_tensor(slots),
                            lengths.to(dev))  # fmt: skip

    def decode(self, slots: list[int]) -> torch.Tensor:
        """One token for each of `slots` (on the device)."""
        if self.graphs is not None:
            return self.graphs.run(slots)
        return decode_step(self.model, self.sampler, self.state, self._slots_tensor(slots))

    def _slots_tensor(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long).to(self.device)
