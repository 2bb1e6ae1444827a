"""CUDA graphs at fixed shapes, shared by the engine's steps (step_graphs.py) and the SNAC decoder
(speech/snac_decoder.py): the batch buckets, the lookup of a batch's bucket, and the capture.

A graph replays a fixed sequence of kernels at fixed shapes, so a batch runs the smallest bucket that holds
it, padded; the callers decide what the padding rows hold and discard their results.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import torch

K = TypeVar("K", bound=Hashable)


def batch_buckets(capacity: int, step: int = 32) -> list[int]:
    """Powers of two up to `step`, then every multiple of `step`, then the capacity. Past 32 slots a decode
    step's cost grows with the batch (attention, sampling), so a batch of 257 should not pay for 384; 32 apart
    wastes at most ~12% at 256."""
    sizes, b = [], 1
    while b < min(capacity, step):
        sizes.append(b)
        b *= 2
    sizes += range(step, capacity, step)
    return [*sizes, capacity]


def bucket_for(buckets: Sequence[int], n: int) -> int:
    """The smallest of `buckets` (ascending) that holds `n`."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} is more than the largest bucket, {buckets[-1]}")


def capture(step: Callable[[], torch.Tensor], pool: Any = None, stream: torch.cuda.Stream | None = None,
            warmup_runs: int = 1) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:  # fmt: skip
    """`step` recorded into a CUDA graph sharing memory pool `pool` (None: a new one); returns the graph and
    its static output. Runs before the capture pay the lazy inits, Triton/torch.compile compilation and
    kernel selection outside it: on a side stream ordered after the current one (`stream` None; the capture
    then runs on torch's own capture stream), or on `stream`, the stream the graph is captured on, with the
    host waiting for it before and after."""
    if stream is None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                step()
        torch.cuda.current_stream().wait_stream(side)
    else:
        stream.synchronize()
        with torch.cuda.stream(stream):
            for _ in range(warmup_runs):
                step()
        stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads (the engine, the SNAC decoder warming up) may use the GPU meanwhile.
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        out = step()
    return graph, out


class GraphSet(Generic[K]):
    """One step function's CUDA graphs at several shapes (`K`: the shape's key), in one memory pool.
    Capture the largest first: the smaller ones then fit in the memory it reserved."""

    def __init__(self, stream: torch.cuda.Stream | None = None, warmup_runs: int = 1) -> None:
        self.stream, self.warmup_runs = stream, warmup_runs
        self.graphs: dict[K, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[K, torch.Tensor] = {}
        self._pool: Any = None

    def capture(self, key: K, step: Callable[[], torch.Tensor]) -> None:
        graph, self.outputs[key] = capture(step, self._pool, self.stream, self.warmup_runs)
        self.graphs[key] = graph
        self._pool = graph.pool()

    def __contains__(self, key: object) -> bool:
        return key in self.graphs

    def replay(self, key: K) -> torch.Tensor:
        """Runs the graph of `key`; its static output, overwritten by the next replay in this pool."""
        self.graphs[key].replay()
        return self.outputs[key]
