"""Decode attention at the Orpheus shape on the GPU: correctness of the compiled Triton kernel against the
PyTorch reference, then time per layer for bf16, int8 and fp8 (e4m3) caches versus SDPA over the padded cache.

    python benchmarks/attention_bench.py --json $OUT/attention.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from orpheus_tts.model.decode_attention import decode_attention, decode_attention_reference, quantize_kv
from orpheus_tts.model.kv_quant import to_fp8

Q_HEADS, KV_HEADS, HEAD_DIM, LAYERS = 24, 8, 128, 28


def make(batch: int, slots: int, max_seq: int, mean_len: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, Q_HEADS, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(slots, KV_HEADS, max_seq, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(slots, KV_HEADS, max_seq, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
    slot_idx = torch.randperm(slots, device="cuda", generator=g)[:batch].to(torch.int32)
    lo, hi = max(1, mean_len // 8), min(max_seq, 2 * mean_len - mean_len // 8)
    lengths = torch.randint(lo, hi + 1, (batch,), device="cuda", generator=g).to(torch.int32)
    return q, k, v, slot_idx, lengths


def sdpa_padded(q, k, v, slot_idx, lengths):
    """What a plain PyTorch engine does: SDPA over every slot's cache up to the longest length."""
    t = int(lengths.max())
    kk, vv = k[slot_idx, :, :t], v[slot_idx, :, :t]
    mask = torch.arange(t, device=q.device)[None, :] < lengths[:, None]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), kk, vv, attn_mask=mask[:, None, None, :], enable_gqa=True)
    return out.squeeze(2)


def check(dtype: torch.dtype) -> dict:
    q, k, v, slot_idx, lengths = make(64, 80, 1072, 340, dtype, seed=1)
    ref = decode_attention_reference(q, k, v, slot_idx, lengths).float()
    out = decode_attention(q, k, v, slot_idx, lengths).float()
    kq, ks = quantize_kv(k)
    vq, vs = quantize_kv(v)
    out8 = decode_attention(q, kq, vq, slot_idx, lengths, k_scale=ks, v_scale=vs).float()
    outf8 = decode_attention(q, to_fp8(k), to_fp8(v), slot_idx, lengths).float()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    return {"dtype": str(dtype), "rel_err_bf16_kernel": rel(out, ref), "rel_err_int8_kernel": rel(out8, ref),
            "rel_err_fp8_kernel": rel(outf8, ref)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--batches", default="1,16,64,128,256,384")
    ap.add_argument("--mean-len", type=int, default=340, help="mean context: prompt ~40 + half of 600 generated")
    args = ap.parse_args()
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(), "checks": check(torch.bfloat16), "rows": []}
    print(json.dumps(result["checks"]))
    assert result["checks"]["rel_err_bf16_kernel"] < 1e-2 and result["checks"]["rel_err_int8_kernel"] < 3e-2
    assert result["checks"]["rel_err_fp8_kernel"] < 8e-2
    print(f"{'batch':>5} {'triton bf16':>12} {'triton int8':>12} {'triton fp8':>12} {'sdpa padded':>12} "
          f"{'bytes bf16':>11} {'GB/s':>6}")  # fmt: skip
    for batch in map(int, args.batches.split(",")):
        q, k, v, slot_idx, lengths = make(batch, batch, 1072, args.mean_len, torch.bfloat16)
        kq, ks = quantize_kv(k)
        vq, vs = quantize_kv(v)
        t_bf16 = do_bench(lambda: decode_attention(q, k, v, slot_idx, lengths), return_mode="median")  # noqa: B023
        t_int8 = do_bench(
            lambda: decode_attention(q, kq, vq, slot_idx, lengths, k_scale=ks, v_scale=vs),  # noqa: B023
            return_mode="median",
        )
        kf8, vf8 = to_fp8(k), to_fp8(v)
        t_fp8 = do_bench(lambda: decode_attention(q, kf8, vf8, slot_idx, lengths), return_mode="median")  # noqa: B023
        t_sdpa = do_bench(lambda: sdpa_padded(q, k, v, slot_idx, lengths), return_mode="median")  # noqa: B023
        kv_bytes = int(lengths.sum()) * KV_HEADS * HEAD_DIM * 2 * 2
        row = {
            "batch": batch, "mean_len": float(lengths.float().mean()),
            "triton_bf16_ms_per_layer": t_bf16, "triton_int8_ms_per_layer": t_int8,
            "triton_fp8_ms_per_layer": t_fp8, "triton_fp8_ms_per_step": t_fp8 * LAYERS, "sdpa_ms_per_layer": t_sdpa,
            "triton_bf16_ms_per_step": t_bf16 * LAYERS, "triton_int8_ms_per_step": t_int8 * LAYERS,
            "sdpa_ms_per_step": t_sdpa * LAYERS, "kv_gbytes_per_layer_bf16": kv_bytes / 1e9,
        }  # fmt: skip
        result["rows"].append(row)
        print(
            f"{batch:>5} {t_bf16 * LAYERS:>10.2f}ms {t_int8 * LAYERS:>10.2f}ms {t_fp8 * LAYERS:>10.2f}ms "
            f"{t_sdpa * LAYERS:>10.2f}ms "
            f"{kv_bytes / 1e6:>9.1f}MB {kv_bytes / t_bf16 / 1e6:>6.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
