"""Decode attention over the static per-slot KV cache: one new query token per sequence.

Why a kernel of our own: at decode time each sequence reads its whole KV history once per step, so the
step is memory bound, and PyTorch's SDPA over a padded `[slots, heads, max_seq, dim]` cache reads every
slot's full `max_seq` (and, for an int8 cache, needs a dequantised copy first: measured 5x slower on the
H100, see shared/reference/h100-measurements.md). This split-K ("flash decoding") kernel reads only each
sequence's valid prefix, dequantises int8 in registers, and handles grouped-query attention by letting
one program serve all query heads of a KV head, so K and V are read once per KV head.

Layout: q `[B, Hq, D]`; caches `[slots, Hkv, max_seq, D]` (bf16/fp16/fp32, fp8 e4m3 on
Hopper/Ada, or int8 with per-token scales `[slots, Hkv, max_seq]`; see kv_quant.py); `slot_idx[B]` says
which cache row each query uses; `lengths[B]` counts valid positions (the current token already written).
Grid and buffers depend only on shapes, never on lengths, so a call can be captured in a CUDA graph and
replayed as sequences grow.

`decode_attention_reference` is the same function in plain PyTorch: the test oracle (the engine's CPU path
is SDPA, in llama.py). Under TRITON_INTERPRET=1 the kernel itself runs on the CPU (the tests).
"""

from __future__ import annotations

import math

import torch
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

from orpheus_tts.model.kv_quant import quantize_kv  # noqa: F401  (re-exported: tests, benchmarks)


@triton.jit
def _split_kernel(
    Q, K, V, KScale, VScale, SlotIdx, Lengths, MidO, MidLse,
    stride_qb, stride_qh,
    stride_ks, stride_kh, stride_kt,
    stride_vs, stride_vh, stride_vt,
    stride_ss, stride_sh,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    sm_scale, chunk,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, QUANTIZED: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    slot = tl.load(SlotIdx + b).to(tl.int64)
    length = tl.load(Lengths + b)
    start = split * chunk
    end = tl.minimum(start + chunk, length)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_g
    gmask = offs_g < GROUP
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=gmask[:, None], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    k_base = K + slot * stride_ks + kv_head * stride_kh
    v_base = V + slot * stride_vs + kv_head * stride_vh
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        # int8 and fp8 tiles convert straight to q's dtype (int8 -> bf16 is exact): no fp32 tile in the loop.
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=nmask[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=nmask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype))).to(tl.float32) * sm_scale
        if QUANTIZED:
            # The per-token scales factor out of both products: K's scales multiply the scores' columns,
            # V's the probabilities, so dequantising costs [GROUP, BLOCK_N] multiplies, not [BLOCK_N, D].
            s_off = slot * stride_ss + kv_head * stride_sh + offs_n
            s = s * tl.load(KScale + s_off, mask=nmask, other=0.0)[None, :]
            v_scale = tl.load(VScale + s_off, mask=nmask, other=0.0)
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if QUANTIZED:
            pv = p * v_scale[None, :]
        else:
            pv = p
        acc = acc * alpha[:, None] + tl.dot(pv.to(q.dtype), v.to(q.dtype)).to(tl.float32)
        m_i = m_new

    # An empty split (start >= length) leaves l_i == 0: mark it with lse = -inf so the merge ignores it.
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(MidO + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :], out,
             mask=gmask[:, None])  # fmt: skip
    tl.store(MidLse + b * stride_lb + heads * stride_lh + split, lse, mask=gmask)


@triton.jit
def _merge_kernel(
    MidO, MidLse, Out,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    stride_b, stride_h,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    smask = offs_s < NUM_SPLITS
    lse = tl.load(MidLse + b * stride_lb + h * stride_lh + offs_s, mask=smask, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(smask & (lse > float("-inf")), tl.exp(lse - m), 0.0)
    o = tl.load(MidO + b * stride_ob + h * stride_oh + offs_s[:, None] * stride_os + offs_d[None, :],
                mask=smask[:, None], other=0.0)  # fmt: skip
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(Out + b * stride_b + h * stride_h + offs_d, out.to(Out.dtype.element_ty))


def pick_num_splits(batch: int, kv_heads: int, max_seq: int, sm_count: int = 132, block_n: int = 64) -> int:
    """Enough programs to fill the GPU about twice over, but no split shorter than one tile."""
    want = max(1, math.ceil(2 * sm_count / max(1, batch * kv_heads)))
    return max(1, min(want, math.ceil(max_seq / block_n)))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_idx: torch.Tensor,
    lengths: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    batch, q_heads, head_dim = q.shape
    kv_heads, max_seq = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    quantized = k_cache.dtype == torch.int8
    if quantized and (k_scale is None or v_scale is None):
        raise ValueError("an int8 cache needs k_scale and v_scale")
    # Any tensor where the kernel reads no scales (not QUANTIZED).
    ks = k_scale if k_scale is not None and quantized else lengths
    vs = v_scale if v_scale is not None and quantized else lengths
    splits = num_splits or pick_num_splits(batch, kv_heads, max_seq, block_n=block_n)
    chunk = math.ceil(math.ceil(max_seq / splits) / block_n) * block_n
    mid_o = torch.empty((batch, q_heads, splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, q_heads, splits), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    stride_ss, stride_sh = (ks.stride(0), ks.stride(1)) if quantized else (0, 0)
    _split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, ks, vs, slot_idx, lengths, mid_o, mid_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        stride_ss, stride_sh,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        1.0 / math.sqrt(head_dim), chunk,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_N=block_n, QUANTIZED=quantized,
    )  # fmt: skip
    _merge_kernel[(batch, q_heads)](
        mid_o, mid_lse, out,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        NUM_SPLITS=splits, SPLITS_PAD=max(2, triton.next_power_of_2(splits)), HEAD_DIM=head_dim,
    )  # fmt: skip
    return out


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_idx: torch.Tensor,
    lengths: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same attention with PyTorch ops: a masked softmax over each slot's cache row."""
    q_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, max_seq = k_cache.shape[1], k_cache.shape[2]
    k = k_cache[slot_idx].float()  # int8 and fp8 as their values
    v = v_cache[slot_idx].float()
    if k_cache.dtype == torch.int8:
        if k_scale is None or v_scale is None:
            raise ValueError("an int8 cache needs k_scale and v_scale")
        k = k * k_scale[slot_idx].float().unsqueeze(-1)
        v = v * v_scale[slot_idx].float().unsqueeze(-1)
    group = q_heads // kv_heads
    k = k.repeat_interleave(group, dim=1)  # [B, Hq, T, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", q.float(), k) / math.sqrt(head_dim)
    valid = torch.arange(max_seq, device=q.device)[None, :] < lengths[:, None].to(q.device)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bht,bhtd->bhd", scores.softmax(-1), v).to(q.dtype)
