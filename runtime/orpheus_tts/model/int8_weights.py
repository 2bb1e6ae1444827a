"""The int8 weight-only checkpoint format: written by `build-engine --weight-quantization int8` (torch
backend), read by model/llama.py. Its one home.

Each Llama projection `<m>_proj.weight` (bf16 `[out, in]`) is stored as `<m>_proj.qweight` (int8) plus
`<m>_proj.scales` (bf16 `[out]`): `w ~= qweight * scales[:, None]`, symmetric per output channel.
Embeddings (tied with the output layer) and norms stay as they are. The shard metadata says
`orpheus_quantization: int8_weight_only`.

The torch backend dequantises the weights once, at load, to the serving dtype: the format saves disk and
download (half the bytes), not GPU memory or step time. (The earlier `Int8Linear` dequantised the whole
weight at every forward: more time than a bf16 GEMM, for no saving in what a step reads.) On Hopper,
`ORPHEUS_LINEAR_DTYPE=fp8` then requantises to FP8 for the GEMMs (model/llama.py).
"""

from __future__ import annotations

import json
import pathlib

import torch

# Llama projection matrices; embeddings (tied with lm_head) and norms stay in their original dtype.
INT8_SUFFIXES = tuple(f"{p}_proj.weight" for p in ("q", "k", "v", "o", "gate", "up", "down"))
METADATA = {"format": "pt", "orpheus_quantization": "int8_weight_only"}


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ~= qweight * scales[:, None]; scales in bf16.

    q is computed against the bf16-rounded scale, so dequantisation with the stored scale is exact
    up to the int8 rounding."""
    w = weight.float()
    scales = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (qweight.float() * scales.float()[:, None]).to(dtype)


def is_int8_checkpoint(tensors: dict[str, torch.Tensor]) -> bool:
    return any(name.endswith(".qweight") for name in tensors)


def dequantize_checkpoint(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`<m>.qweight` + `<m>.scales` -> `<m>.weight` in `dtype`; every other tensor as it is."""
    out = {name: t for name, t in tensors.items() if not name.endswith((".qweight", ".scales"))}
    for name in [n for n in tensors if n.endswith(".qweight")]:
        base = name.removesuffix(".qweight")
        out[f"{base}.weight"] = dequantize_int8(tensors[name], tensors[f"{base}.scales"], dtype)
    return out


def quantize_model_dir_int8(model_dir: pathlib.Path) -> None:
    """Rewrites every *.safetensors shard in place: `<m>.weight` -> `<m>.qweight` + `<m>.scales`."""
    from safetensors.torch import load_file, save_file

    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(shard)
        out = {}
        for name, t in tensors.items():
            if name.endswith(INT8_SUFFIXES) and t.ndim == 2:
                base = name.removesuffix(".weight")
                out[f"{base}.qweight"], out[f"{base}.scales"] = quantize_int8(t)
            else:
                out[name] = t
        shard.unlink()  # may be a hard link into the hub cache: never write through it
        save_file(out, shard, metadata=METADATA)
        if index is not None:
            for name in tensors:
                if name.endswith(INT8_SUFFIXES) and name in index["weight_map"]:
                    base = name.removesuffix(".weight")
                    file = index["weight_map"].pop(name)
                    index["weight_map"][f"{base}.qweight"] = index["weight_map"][f"{base}.scales"] = file
    if index is not None:
        index_path.unlink()
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
