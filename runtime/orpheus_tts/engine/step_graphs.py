"""The device side of an engine step: `decode_step` and `prefill_step` over static per-slot state, and the
CUDA graphs that replay them at fixed shapes (model_runner.py drives them; cuda_graphs.py captures).

Graphs matter because both steps are bound by kernel launches when run eagerly: a decode step at small
batches, and a prefill always (33-47 ms of wall time for 4-13 ms replayed on the H100, which stalled every
stream's decode while requests arrived; docs/benchmarks.md). A batch runs the smallest bucket that
holds it, padded with entries that point at the scratch slot; their results are discarded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from orpheus_tts.engine.cuda_graphs import GraphSet, batch_buckets, bucket_for
from orpheus_tts.engine.sampling import SlotSampler
from orpheus_tts.model.llama import Transformer


@dataclass
class DeviceState:
    """What a decode step reads and writes besides the model's KV cache and the sampler: per slot, the
    last generated token (the next step's input) and how many positions its cache row holds."""

    last_token: torch.Tensor
    lengths: torch.Tensor


def decode_step(model: Transformer, sampler: SlotSampler, state: DeviceState, slots: torch.Tensor) -> torch.Tensor:
    """One token for each of `slots`; device-only, static shapes, no host sync (CUDA-graph capturable)."""
    # Padding entries of a bucketed batch all decode the scratch slot, whose length would otherwise grow
    # past the cache; real slots never reach the clamp (prompt + max_tokens <= max_seq).
    assert model.k_cache is not None, "setup_caches first"
    positions = state.lengths[slots].clamp(max=model.k_cache.shape[3] - 1)
    logits = model.decode(state.last_token[slots], slots, positions)
    ids = sampler.sample(logits, slots)
    state.last_token[slots] = ids
    state.lengths[slots] = positions + 1
    return ids


def prefill_step(model: Transformer, sampler: SlotSampler, state: DeviceState, tokens: torch.Tensor,
                 slots: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Prompts (right-padded `[N, T]`) into fresh slots; returns each one's first generated token."""
    logits = model.prefill(tokens, slots, lengths)
    ids = sampler.sample(logits, slots)
    state.last_token[slots] = ids
    state.lengths[slots] = lengths
    return ids


def right_padded(prompts: list[list[int]], rows: int, width: int) -> torch.Tensor:
    """Prompts as a `[rows, width]` tensor (on the CPU), each row zero-padded on the right."""
    tokens = torch.zeros((rows, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    return tokens


class DecodeGraphs:
    """`decode_step` at a fixed set of batch sizes, one CUDA graph per size (`capture=True`, CUDA only).

    A decode step launches hundreds of small kernels; at small batches launching them costs more than
    running them. A graph replays them all at once. A batch of n slots runs the smallest bucket >= n, with
    the extra entries pointing at the scratch slot; their results are discarded. With `capture=False` the
    same padded step runs eagerly, which is how the CPU tests check the padding.
    """

    def __init__(self, model: Transformer, sampler: SlotSampler, state: DeviceState, capacity: int,
                 scratch_slot: int, capture: bool) -> None:  # fmt: skip
        self.model, self.sampler, self.state = model, sampler, state
        self.scratch = scratch_slot
        self.buckets = batch_buckets(capacity)
        device = state.lengths.device
        self.slots = {b: torch.full((b,), scratch_slot, dtype=torch.long, device=device) for b in self.buckets}
        self.graphs: GraphSet[int] = GraphSet()
        if capture:
            self._capture()

    def _capture(self) -> None:
        # Largest first: smaller graphs then fit in the memory pool the largest one reserved.
        for b in reversed(self.buckets):
            self.graphs.capture(b, functools.partial(decode_step, self.model, self.sampler, self.state, self.slots[b]))
        torch.cuda.synchronize()
        # Capture and warm-up advanced the scratch slot; give it a clean start.
        self.state.lengths[self.scratch] = 0

    def run(self, slots: list[int]) -> torch.Tensor:
        n = len(slots)
        b = bucket_for(self.buckets, n)
        # Through numpy: torch.tensor from a list of 400 ints takes ~4x as long, every step.
        padded = torch.from_numpy(np.array(slots + [self.scratch] * (b - n), dtype=np.int64))
        self.slots[b].copy_(padded, non_blocking=True)
        if b in self.graphs:
            out = self.graphs.replay(b)
        else:
            out = decode_step(self.model, self.sampler, self.state, self.slots[b])
        return out[:n]


def length_buckets(max_len: int, step: int = 16) -> list[int]:
    """Prompt lengths that get a prefill graph: every `step` tokens, then `max_len`."""
    return [*range(step, max_len, step), max_len]


class PrefillGraphs:
    """`prefill_step` at fixed (prompts, prompt length) shapes, one CUDA graph each (`capture=True`).

    N prompts run in the smallest prompt bucket >= N, right-padded to the smallest length bucket >= the
    longest; padding rows prefill one token into the scratch slot. More prompts than the largest bucket
    run in several replays. With `capture=False` the same padded prefill runs eagerly (CPU tests)."""

    def __init__(self, model: Transformer, sampler: SlotSampler, state: DeviceState, max_prompts: int,
                 max_len: int, scratch_slot: int, capture: bool) -> None:  # fmt: skip
        self.model, self.sampler, self.state = model, sampler, state
        self.scratch = scratch_slot
        self.sizes, self.lengths = batch_buckets(max_prompts), length_buckets(max_len)
        device = state.lengths.device
        # (prompts, length) -> static tokens, slots, lengths
        self.inputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for n in self.sizes:
            for t in self.lengths:
                slots = torch.full((n,), scratch_slot, dtype=torch.long, device=device)
                lengths = torch.ones(n, dtype=torch.long, device=device)
                self.inputs[(n, t)] = (torch.zeros((n, t), dtype=torch.long, device=device), slots, lengths)
        # Its own pool: a prefill's output must survive the decode graph replayed after it.
        self.graphs: GraphSet[tuple[int, int]] = GraphSet()
        if capture:
            self._capture()

    def _step(self, shape: tuple[int, int]) -> torch.Tensor:
        return prefill_step(self.model, self.sampler, self.state, *self.inputs[shape])

    def _capture(self) -> None:
        for shape in sorted(self.inputs, key=lambda s: -s[0] * s[1]):  # largest first, as for decode
            self.graphs.capture(shape, functools.partial(self._step, shape))
        torch.cuda.synchronize()
        self.state.lengths[self.scratch] = 0

    def run(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Each prompt's first generated token `[len(prompts)]`, prompts prefilled into `slots`."""
        most = self.sizes[-1]
        return torch.cat([self._run(prompts[i : i + most], slots[i : i + most]) for i in range(0, len(prompts), most)])

    def _run(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        n = bucket_for(self.sizes, len(prompts))
        t = bucket_for(self.lengths, max(map(len, prompts)))
        pad = n - len(prompts)
        static_tokens, static_slots, static_lengths = self.inputs[(n, t)]
        static_tokens.copy_(right_padded(prompts, n, t), non_blocking=True)
        static_slots.copy_(torch.tensor(slots + [self.scratch] * pad), non_blocking=True)
        static_lengths.copy_(torch.tensor([len(p) for p in prompts] + [1] * pad), non_blocking=True)
        if (n, t) in self.graphs:
            out = self.graphs.replay((n, t))
        else:
            out = self._step((n, t))
        return out[: len(prompts)].clone()  # the next replay of this pool overwrites `out`
