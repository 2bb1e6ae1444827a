"""Quantised KV cache storage (torch only; decode_attention.py reads it in its kernel).

- int8: symmetric per (token, head) over the head dim, `x ~= q * scale[..., None]`, fp32 scales stored
  beside the cache (`[layers, slots, kv_heads, max_seq]`, 3% of the int8 bytes at head dim 128).
- fp8: e4m3 with no scale (values clamped to its range, +-448): K and V of a Llama layer sit well inside
  it, and e4m3 keeps a relative precision of 2^-4 at every magnitude. Hopper and Ada only, for the kernel.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def storage_dtype(kind: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache tensors' dtype for a `kv_cache_dtype` setting ("auto": the model's)."""
    return {"auto": model_dtype, "int8": torch.int8, "fp8": FP8}[kind]


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per (token, head) over the head dim: `x ~= q * scale[..., None]`."""
    scale = x.abs().amax(dim=-1).float().clamp(min=1e-6) / 127.0
    q = torch.round(x.float() / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, scale


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """e4m3, saturating (a plain cast turns out-of-range values into NaN)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def dequantize(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Cache rows back to `dtype` (scale: the int8 scales of the same rows, else None)."""
    if scale is not None:
        return (x.float() * scale.float().unsqueeze(-1)).to(dtype)
    return x.to(dtype)
