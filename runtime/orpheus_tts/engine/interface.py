"""The interface every LLM backend implements (torch_engine.py, trtllm_engine.py).

An engine turns a prompt (token ids) into a stream of generated token ids, for many requests at once
(in-flight batching). It knows nothing of text or audio: prompts.py builds the ids, audio_codes.py
reads the output.

Contract:
- `submit(request)` returns an async iterator of lists of new token ids, in order. How many per list is
  the backend's choice: the torch engine hands over whole 7-id audio frames (a consumer can use nothing
  smaller) plus the remainder at the end; TensorRT-LLM whatever its step produced. The stream ends after
  a stop id (which is not yielded) or after `params.max_tokens` ids.
- Leaving the iteration early (break, aclose, task cancelled, client gone) frees the request's slot
  within one engine step; so does `cancel(request_id)`.
- A failure of one request raises `EngineError` from its iterator and leaves the others running.
- `capacity` is how many requests decode together; more are queued in arrival order. `occupancy()` says
  how many hold a slot and how many wait.
- Both engines refuse a request that breaks their limits with `validate_request`'s EngineError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3  # over generated tokens; Orpheus loops without >= 1.1
    max_tokens: int = 1024
    # Stop ids are ignored until this many tokens were generated. Benchmarks set
    # min_tokens == max_tokens to force a fixed length (random weights never stop on their own).
    min_tokens: int = 0
    seed: int | None = None

    def validate(self, max_output_len: int) -> SamplingParams:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1.0 <= self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in [1, 2], got {self.repetition_penalty}")
        if not 1 <= self.max_tokens <= max_output_len:
            raise ValueError(f"max_tokens must be in [1, {max_output_len}], got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens], got {self.min_tokens}")
        return self


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class EngineOccupancy:
    """How full the engine is (for /metrics)."""

    active: int  # requests holding a slot
    queued: int  # requests waiting for one
    capacity: int


@dataclass
class EngineStats:
    """Cumulative counters of an engine's loop, for /metrics (backends without them leave them at 0)."""

    steps: int = 0  # loop iterations that ran a prefill and/or a decode step
    step_seconds: float = 0.0  # their wall time, host work included
    prefill_gpu_seconds: float = 0.0  # GPU time of the prefills (CUDA events; 0 on CPU)
    decode_gpu_seconds: float = 0.0  # GPU time of the decode steps (CUDA events; 0 on CPU)


class EngineError(RuntimeError):
    """A request failed inside the engine; `kind` is a short label for metrics."""

    def __init__(self, message: str, kind: str = "engine") -> None:
        super().__init__(message)
        self.kind = kind


def validate_request(request: GenerationRequest, max_input_len: int, max_output_len: int,
                     vocab_size: int | None = None) -> None:  # fmt: skip
    """Both engines' checks of a request against their limits, before it reaches their scheduler: raises
    EngineError (kind "invalid_request"). `vocab_size`: also check that every prompt id is a token id (the
    torch engine would index its embedding out of range; TensorRT-LLM is left to check its own)."""
    try:
        request.params.validate(max_output_len)
    except ValueError as e:
        raise EngineError(str(e), "invalid_request") from None
    n = len(request.prompt_ids)
    if not 1 <= n <= max_input_len:
        raise EngineError(f"prompt has {n} tokens; the engine takes 1..{max_input_len}", "invalid_request")
    if vocab_size is not None and any(not (isinstance(t, int) and 0 <= t < vocab_size) for t in request.prompt_ids):
        raise EngineError(f"prompt ids must be integers in [0, {vocab_size})", "invalid_request")


class Engine(Protocol):
    @property
    def capacity(self) -> int: ...

    def occupancy(self) -> EngineOccupancy: ...

    @property
    def stats(self) -> EngineStats: ...

    async def start(self) -> None:
        """Loads weights, allocates caches, warms up (compiles / captures graphs)."""

    def submit(self, request: GenerationRequest) -> AsyncIterator[list[int]]: ...

    def cancel(self, request_id: str) -> None: ...

    async def close(self) -> None: ...
