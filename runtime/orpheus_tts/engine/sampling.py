"""Per-request sampling on the device, for a batch of slots at once, with no host sync.

Orpheus emits 7-token audio frames: generated token i must be a code of codebook block i % 7, i.e. in
[audio_offset + (i%7)*4096, audio_offset + (i%7+1)*4096), and a stop id may only come at a frame
boundary (i % 7 == 0) once `min_tokens` are out. So each step samples among 4096 + len(stop_ids)
candidates: the slot's current block plus the stop ids, taken from output-layer logits over the rows
`output_rows(spec)` (all blocks, then the stop ids).

Randomness is a counter-based hash of (request seed, token index, candidate), not a stateful generator:
a request draws the same numbers whichever slots it shares a batch with, so seeded requests are
reproducible under continuous batching, and the step stays capturable in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from orpheus_tts.model.model_spec import ModelSpec

_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # small enough that int64 products never overflow (x < 2^32, product < 2^59)


def output_rows(spec: ModelSpec) -> torch.Tensor:
    """The vocabulary rows the output layer computes: the 7 audio blocks, then the stop ids."""
    return torch.cat([torch.arange(spec.audio_offset, spec.audio_end), torch.tensor(spec.stop_ids)])


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    return (x >> 16) ^ x


def hashed_uniform(seeds: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """Uniform floats in (0, 1), `[B, n]`, a pure function of (seed, counter, column). seeds < 2^32."""
    cols = torch.arange(n, device=seeds.device)
    x = (_mix32(seeds & _MASK32)[:, None] * 0x9E37 + counters[:, None] * 0x85EB + cols) & _MASK32
    x = _mix32(_mix32(x) ^ seeds[:, None])
    return ((x >> 8).float() + 0.5) / float(1 << 24)  # 24 bits: exact in fp32, never 0 or 1


def apply_repetition_penalty(logits: torch.Tensor, present: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF/CTRL penalty on tokens already generated: positive logits divided, negative multiplied."""
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(present, penalised, logits)


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zeroes the tail outside each row's nucleus. Keeps the top token always; ties at the cut are kept."""
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each sorted entry
    keep = before < top_p[:, None]
    threshold = torch.where(keep, sorted_probs, torch.ones_like(sorted_probs)).amin(-1, keepdim=True)
    return torch.where(probs >= threshold, probs, torch.zeros_like(probs))


def sample_from_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """Column index per row: argmax where temperature == 0, else top-p sampling at that temperature.

    Sampling is the exponential race argmax(p / E), E = -log(U), which draws from p exactly and needs
    no normalisation or cumulative search."""
    greedy = logits.argmax(-1)
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    probs = torch.softmax(logits / temp[:, None], dim=-1)
    probs = top_p_filter(probs, top_p)
    sampled = (probs / -torch.log(uniform)).argmax(-1)
    return torch.where(temperature > 0, sampled, greedy)


def draw(cand: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor, temperature: torch.Tensor,
         top_p: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Candidate index per row: the hashed uniforms and the sampling, as one function to compile."""
    return sample_from_logits(cand, temperature, top_p, hashed_uniform(seeds, counters, cand.shape[-1]))


@dataclass
class SlotParams:
    """Host-side sampling settings of one request, written into its slot at admission."""

    temperature: float
    top_p: float
    repetition_penalty: float
    min_tokens: int
    seed: int


class SlotSampler:
    """Per-slot sampling state on the device, and the batched sample + advance of one step."""

    def __init__(self, spec: ModelSpec, slots: int, device: torch.device) -> None:
        self.block, self.frame = spec.codebook_size, spec.codes_per_frame
        self.audio_offset = spec.audio_offset
        self.n_stop = len(spec.stop_ids)
        self.stop_ids = torch.tensor(spec.stop_ids, device=device)
        f32: dict[str, Any] = dict(dtype=torch.float32, device=device)
        i64: dict[str, Any] = dict(dtype=torch.int64, device=device)
        self.temperature = torch.ones(slots, **f32)
        self.top_p = torch.ones(slots, **f32)
        self.penalty = torch.ones(slots, **f32)
        self.min_tokens = torch.zeros(slots, **i64)
        self.seeds = torch.zeros(slots, **i64)
        self.generated = torch.zeros(slots, **i64)  # tokens generated so far = index of the next one
        self.present = torch.zeros(slots, spec.audio_rows, dtype=torch.bool, device=device)
        self.draw = draw

    def compile(self) -> None:
        """Fuses the ~40 elementwise kernels of hashing and top-p into a few (torch.compile, CUDA)."""
        self.draw = torch.compile(draw, dynamic=True)

    def reset(self, slot: int, p: SlotParams) -> None:
        self.temperature[slot] = p.temperature
        self.top_p[slot] = p.top_p
        self.penalty[slot] = p.repetition_penalty
        self.min_tokens[slot] = p.min_tokens
        self.seeds[slot] = p.seed & _MASK32
        self.generated[slot] = 0
        self.present[slot] = False

    def candidates(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """`[B, audio_rows + n_stop]` output logits -> `[B, block + n_stop]` candidate logits (fp32),
        penalised, with stop ids masked where they are not allowed."""
        b = logits.shape[0]
        gen = self.generated[slots]
        pos = gen % self.frame
        rows = torch.arange(b, device=logits.device)
        audio = logits[:, : self.frame * self.block].view(b, self.frame, self.block)[rows, pos].float()
        present = self.present[slots].view(b, self.frame, self.block)[rows, pos]
        audio = apply_repetition_penalty(audio, present, self.penalty[slots])
        stop_ok = (pos == 0) & (gen >= self.min_tokens[slots])
        stops = logits[:, self.frame * self.block :].float()
        stops = torch.where(stop_ok[:, None], stops, torch.full_like(stops, float("-inf")))
        return torch.cat([audio, stops], dim=-1)

    def sample(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Token ids `[B]` for the slots' next positions; then advances their state."""
        cand = self.candidates(logits, slots)
        gen = self.generated[slots]
        idx = self.draw(cand, self.seeds[slots], gen, self.temperature[slots], self.top_p[slots])
        is_audio = idx < self.block
        pos = gen % self.frame
        audio_id = self.audio_offset + pos * self.block + idx
        stop_id = self.stop_ids[(idx - self.block).clamp(0, self.n_stop - 1)]
        ids = torch.where(is_audio, audio_id, stop_id)
        # Mark the code as generated (a stop ends the request, so it needs no mark); a non-audio pick
        # writes False to an arbitrary cell of the row, which changes nothing.
        code_row = (pos * self.block + idx).clamp(max=self.frame * self.block - 1)
        self.present[slots, code_row] = self.present[slots, code_row] | is_audio
        self.generated[slots] = gen + 1
        return ids
