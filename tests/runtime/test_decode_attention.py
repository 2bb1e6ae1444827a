"""The Triton decode-attention kernel against its PyTorch reference, run on the CPU through Triton's
interpreter (CI has no GPU; bench/gpu_bench.py checks the compiled kernel on the H100 the same way).

TRITON_INTERPRET must be set before triton is first imported, so the kernel checks run in a child
process (this file is its script); the pure-PyTorch parts are tested in-process.
"""

import os
import subprocess
import sys

import pytest
import torch

from orpheus_tts.model.decode_attention import decode_attention, decode_attention_reference, quantize_kv


def make_case(batch, slots, q_heads, kv_heads, max_seq, head_dim, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, head_dim, generator=g)
    k = torch.randn(slots, kv_heads, max_seq, head_dim, generator=g)
    v = torch.randn(slots, kv_heads, max_seq, head_dim, generator=g)
    slot_idx = torch.randperm(slots, generator=g)[:batch].to(torch.int32)
    lengths = torch.randint(1, max_seq + 1, (batch,), generator=g).to(torch.int32)
    lengths[0] = 1  # the first decode step after a one-token prompt
    lengths[-1] = max_seq  # a full cache row
    return q, k, v, slot_idx, lengths


def check_fp32(num_splits):
    # GQA 3:1 as in Orpheus (24 query heads over 8 KV heads), lengths not multiples of the tile.
    q, k, v, slot_idx, lengths = make_case(batch=4, slots=6, q_heads=6, kv_heads=2, max_seq=70, head_dim=16, seed=0)
    out = decode_attention(q, k, v, slot_idx, lengths, num_splits=num_splits, block_n=16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, decode_attention_reference(q, k, v, slot_idx, lengths), rtol=1e-4, atol=1e-4)


def check_int8():
    # (In fp32: Triton 3.6's interpreter computes garbage for bf16 operands, the unchanged kernel included;
    # benchmarks/lever_check.py checks the bf16 engine path on the GPU.)
    q, k, v, slot_idx, lengths = make_case(batch=3, slots=4, q_heads=4, kv_heads=2, max_seq=40, head_dim=16, seed=1)
    kq, ks = quantize_kv(k)
    vq, vs = quantize_kv(v)
    out = decode_attention(q, kq, vq, slot_idx, lengths, k_scale=ks, v_scale=vs, num_splits=2, block_n=16)
    expected = decode_attention_reference(q, kq, vq, slot_idx, lengths, k_scale=ks, v_scale=vs)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # int8 stays close to unquantised attention: the error budget of the int8 KV cache.
    exact = decode_attention_reference(q, k, v, slot_idx, lengths)
    assert (out - exact).norm() / exact.norm() < 0.02


def check_valid_prefix_only():
    # Garbage (NaN) beyond each slot's length must not leak into the output.
    q, k, v, slot_idx, lengths = make_case(batch=2, slots=2, q_heads=2, kv_heads=1, max_seq=48, head_dim=16, seed=2)
    lengths[:] = torch.tensor([5, 33], dtype=torch.int32)
    for row, n in zip(slot_idx.tolist(), lengths.tolist(), strict=True):
        k[row, :, n:] = float("nan")
        v[row, :, n:] = float("nan")
    out = decode_attention(q, k, v, slot_idx, lengths, num_splits=4, block_n=16)
    assert torch.isfinite(out).all()


CHECKS = {
    "fp32_one_split": lambda: check_fp32(1),
    "fp32_three_splits": lambda: check_fp32(3),
    "int8": check_int8,
    "valid_prefix_only": check_valid_prefix_only,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_kernel_in_triton_interpreter(name):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_reference_masks_beyond_length():
    q, k, v, slot_idx, lengths = make_case(batch=2, slots=3, q_heads=2, kv_heads=1, max_seq=10, head_dim=8, seed=3)
    lengths[:] = torch.tensor([1, 4], dtype=torch.int32)
    out = decode_attention_reference(q, k, v, slot_idx, lengths)
    # One valid position: attention returns exactly that position's value.
    torch.testing.assert_close(out[0], v[slot_idx[0], :, 0].repeat_interleave(2, 0))


def test_quantize_kv_roundtrip():
    x = torch.randn(3, 2, 5, 16)
    qx, scale = quantize_kv(x)
    assert qx.dtype == torch.int8 and scale.shape == (3, 2, 5)
    assert ((qx.float() * scale.unsqueeze(-1)) - x).abs().max() <= scale.max() / 2 + 1e-6


def _fix_interpreter_for_numpy_2_4():
    # Triton 3.6's interpreter turns scalars into 1-element arrays and calls int() on them, which NumPy 2.4
    # made an error (it was a deprecation): loops with runtime bounds fail without this.
    import triton.runtime.interpreter as interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if __name__ == "__main__":
    _fix_interpreter_for_numpy_2_4()
    CHECKS[sys.argv[1]]()
