"""Batch sizes that get a CUDA graph of their own (the decode step, SNAC): a batch runs the smallest bucket
that holds it, padded."""

from __future__ import annotations


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
