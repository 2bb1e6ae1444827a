"""A Llama for serving, gpt-fast style: static per-slot KV cache, batched prefill and one-token decode.

Every sequence owns a fixed cache row ("slot") of `max_seq` positions, so a decode step has the same
tensor shapes whatever the sequences' lengths are: the step can be captured in a CUDA graph and replayed
as sequences grow. Attention masks each slot to its own length.

Cache layout: K and V each `[layers, slots, kv_heads, max_seq, head_dim]`, as decode_attention.py expects.
The math (RMSNorm in fp32, rotate-half RoPE with Llama 3 scaling) follows HF transformers' LlamaModel so
that HF checkpoints load unchanged and the logits match (tests/runtime/test_llama.py checks this).
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from orpheus_tts.model import int8_weights, kv_quant
from orpheus_tts.model.model_spec import LlamaShape, RopeScaling

LINEAR_DTYPES = ("auto", "fp8")  # the layers' projections: the model dtype, or FP8 e4m3 (Hopper)
KV_CACHE_DTYPES = ("auto", "int8", "fp8")  # the KV cache: the model dtype, int8 + per-token scales, e4m3


def rope_inv_freq(shape: LlamaShape) -> torch.Tensor:
    """Inverse frequencies, with Llama 3's scaling: long wavelengths slowed down by `factor`, short ones
    kept, a smooth blend in between (same as HF's `_compute_llama3_parameters`)."""
    d = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s: RopeScaling | None = shape.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, blended, scaled)


def rope_tables(shape: LlamaShape, max_seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[max_seq, head_dim]` in fp32 (the halves repeated, for rotate-half)."""
    freqs = torch.outer(torch.arange(max_seq, dtype=torch.float32), rope_inv_freq(shape))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In fp32 like HF: bf16 variance loses too much.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The residual stream after adding `delta`, and its norm (one fused kernel when compiled)."""
    h = x + delta
    return h, rms_norm(h, weight, eps)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE on q `[..., Hq, T, D]` and k `[..., Hkv, T, D]`; cos/sin `[..., 1, T, D]` in their dtype."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    return rotate(q), rotate(k)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class LayerOps:
    """The elementwise pieces of a layer. Eager, each is several small kernels (about 30 per layer per
    step); `compiled_ops()` fuses each into one Triton kernel, which is most of what separates a decode
    step from its GEMMs and attention at small batches (docs/benchmarks.md)."""

    rms_norm: Callable = rms_norm
    add_rms_norm: Callable = add_rms_norm
    rope: Callable = rope
    swiglu: Callable = swiglu


def compiled_ops() -> LayerOps:
    """torch.compile'd LayerOps, dynamic in batch and length so one compilation serves every CUDA-graph
    bucket and prefill shape (nano-vllm compiles the same pieces)."""
    c = functools.partial(torch.compile, dynamic=True, fullgraph=True)
    return LayerOps(c(rms_norm), c(add_rms_norm), c(rope), c(swiglu))


class RMSNorm(nn.Module):
    """Holds a norm's weight under HF's state-dict name; the math is `rms_norm` (via LayerOps)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Fp8Linear(nn.Module):
    """FP8 (e4m3) weights and activations for Hopper's FP8 tensor cores: `y = (xq @ wq.T) * sx * sw`.

    Weights: per output channel scales, quantised once at load. Activations: per token (row) scales,
    quantised at every call. On CUDA the product is `torch._scaled_mm` with row-wise scales (sm89+); on a
    CPU the same numbers are emulated in fp32 (tests). Halves the weight bytes a decode step streams and
    doubles the tensor-core rate of the prefill GEMMs."""

    weight_t: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        qweight, scales = quantize_fp8_rows(weight)
        self.register_buffer("weight_t", qweight.t())  # [in, out], column-major: what _scaled_mm wants
        self.register_buffer("scales", scales[None, :])  # [1, out] fp32
        # Eager, the activation quantisation is ~8 small kernels per call (x 112 projections per step):
        # Transformer.compile_ops() swaps in a compiled one (one fused kernel).
        self.quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = quantize_fp8_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        xq, xs = self.quantize(x.reshape(-1, k))
        if x.is_cuda:
            y = torch._scaled_mm(xq, self.weight_t, scale_a=xs[:, None], scale_b=self.scales, out_dtype=x.dtype)
        else:
            y = ((xq.float() * xs[:, None]) @ (self.weight_t.float() * self.scales)).to(x.dtype)
        return y.reshape(*lead, -1)


FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric e4m3 per row: `x ~= q * scale[:, None]`, scale fp32 `[rows]`."""
    scale = x.abs().amax(dim=-1).float().clamp(min=1e-12) / FP8_MAX
    q = (x.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def use_fp8_linears(model: Transformer) -> None:
    """Replaces every projection of every layer (not the embedding or output layer) by an Fp8Linear."""
    for block in model.blocks():
        for name in ("wqkv", "wo", "w13", "w2"):
            setattr(block, name, Fp8Linear(getattr(block, name).weight))


class Block(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        # Fused projections: one GEMM each instead of three and two (loader concatenates HF's weights).
        self.wqkv = nn.Linear(shape.hidden_size, q_dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(q_dim, shape.hidden_size, bias=False)
        self.w13 = nn.Linear(shape.hidden_size, 2 * shape.intermediate_size, bias=False)
        self.w2 = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)
        self.attention_norm = RMSNorm(shape.hidden_size)
        self.ffn_norm = RMSNorm(shape.hidden_size)

    def qkv(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """normed input `[N, T, H]` -> q `[N, Hq, T, D]`, k and v `[N, Hkv, T, D]`."""
        n, t, _ = normed.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q, k, v = self.wqkv(normed).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(n, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(n, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(n, t, self.n_kv, self.head_dim).transpose(1, 2)
        return q, k, v

    def out(self, attn: torch.Tensor) -> torch.Tensor:
        """Output projection of attn `[N, Hq, T, D]` -> `[N, T, H]` (before the residual)."""
        n, _, t, _ = attn.shape
        return self.wo(attn.transpose(1, 2).reshape(n, t, -1))


class Transformer(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.shape = shape
        self.tok_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size)
        self.output = None if shape.tie_word_embeddings else nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.k_scale: torch.Tensor | None = None  # int8 cache only: per (token, head) scales
        self.v_scale: torch.Tensor | None = None
        self.kv_cache_dtype = "auto"
        self.out_weight: torch.Tensor | None = None
        self.attention = "sdpa"
        self.ops = LayerOps()

    # -- setup --------------------------------------------------------------------------------------

    def setup_caches(self, slots: int, max_seq: int, attention: str = "sdpa", kv_cache_dtype: str = "auto") -> None:
        """Allocates K/V `[layers, slots, kv_heads, max_seq, head_dim]` and the RoPE tables.

        attention: "sdpa" (PyTorch, any device) or "triton" (decode_attention.py, CUDA only).
        kv_cache_dtype: "auto" (the model's dtype), "int8" or "fp8" (kv_quant.py). Prefill attends over
        its own fresh K/V; only what later decode steps read back goes through the quantised cache."""
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {kv_cache_dtype!r}")
        weight = self.tok_embeddings.weight
        s = self.shape
        dims = (s.num_layers, slots, s.num_kv_heads, max_seq, s.head_dim)
        store = kv_quant.storage_dtype(kv_cache_dtype, weight.dtype)
        self.k_cache = torch.zeros(dims, dtype=store, device=weight.device)
        self.v_cache = torch.zeros(dims, dtype=store, device=weight.device)
        self.kv_cache_dtype = kv_cache_dtype
        if kv_cache_dtype == "int8":
            self.k_scale = torch.zeros(dims[:-1], dtype=torch.float32, device=weight.device)
            self.v_scale = torch.zeros(dims[:-1], dtype=torch.float32, device=weight.device)
        else:
            self.k_scale = self.v_scale = None
        cos, sin = rope_tables(s, max_seq, weight.device)
        self.cos, self.sin = cos.to(weight.dtype), sin.to(weight.dtype)
        self.attention = attention
        if self.out_weight is None:
            self.set_output_rows(None)

    def set_output_rows(self, rows: torch.Tensor | None) -> None:
        """Makes the output layer compute only `rows` of the vocabulary (all when None).

        Orpheus only ever emits the 7x4096 audio codes and a stop id: skipping the other ~128k rows is
        ~28% of a decode step at batch 256 (shared/reference/h100-measurements.md). A copy, so the GEMM
        reads one contiguous weight."""
        full = self.tok_embeddings.weight if self.output is None else self.output.weight
        self.out_weight = full.detach() if rows is None else full[rows.to(full.device)].contiguous()

    # -- forward ------------------------------------------------------------------------------------

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """Output-layer logits `[..., rows]` of final-normed hidden states."""
        if self.out_weight is None:
            raise RuntimeError("setup_caches() first")
        return F.linear(normed, self.out_weight)

    def caches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V `[layers, slots, kv_heads, max_seq, head_dim]`."""
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("setup_caches() first")
        return self.k_cache, self.v_cache

    def blocks(self) -> list[Block]:
        return [cast(Block, layer) for layer in self.layers]

    def write_kv(self, i: int, slots: torch.Tensor, pos: torch.Tensor | slice, k: torch.Tensor,
                 v: torch.Tensor) -> None:  # fmt: skip
        """Stores layer i's K/V at `[slots, :, pos]` of the cache, quantised as the cache is."""
        k_cache, v_cache = self.caches()
        for cache, scale, x in ((k_cache, self.k_scale, k), (v_cache, self.v_scale, v)):
            if scale is not None:
                cache[i, slots, :, pos], scale[i, slots, :, pos] = kv_quant.quantize_kv(x)
            elif cache.dtype == kv_quant.FP8:
                # Through a byte view: indexed writes are implemented for every integer type on every
                # device, not for every float8 type.
                cache.view(torch.uint8)[i, slots, :, pos] = kv_quant.to_fp8(x).view(torch.uint8)
            else:
                cache[i, slots, :, pos] = x

    def read_kv_rows(self, i: int, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's whole cache rows of `slots`, dequantised to `dtype` (the SDPA path)."""

        def one(cache: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
            return kv_quant.dequantize(cache[i, slots], None if scale is None else scale[i, slots], dtype)

        k_cache, v_cache = self.caches()
        return one(k_cache, self.k_scale), one(v_cache, self.v_scale)

    def compile_ops(self) -> None:
        """Fused elementwise kernels (torch.compile, CUDA); compiled at first use, i.e. during warm-up.
        Call after use_fp8_linears (load_transformer does that first): FP8 projections get a compiled
        activation quantisation too."""
        self.ops = compiled_ops()
        fp8 = [m for m in self.modules() if isinstance(m, Fp8Linear)]
        if fp8:
            quantize = torch.compile(quantize_fp8_rows, dynamic=True, fullgraph=True)
            for m in fp8:
                m.quantize = quantize

    def _layers(self, x: torch.Tensor, attend: Callable) -> torch.Tensor:
        """The layer stack over embeddings x `[N, T, H]`; `attend(i, q, k, v)` does layer i's RoPE'd
        attention (and cache writes). Returns the final norm of the residual stream.

        The residual add of each sub-layer is fused into the next norm (`add_rms_norm`), as vLLM does."""
        ops, eps = self.ops, self.shape.rms_norm_eps
        h, delta = x, None
        for i, layer in enumerate(self.blocks()):
            if delta is None:
                normed = ops.rms_norm(h, layer.attention_norm.weight, eps)
            else:
                h, normed = ops.add_rms_norm(h, delta, layer.attention_norm.weight, eps)
            attn = attend(i, *layer.qkv(normed))
            h, normed = ops.add_rms_norm(h, layer.out(attn), layer.ffn_norm.weight, eps)
            delta = layer.w2(ops.swiglu(layer.w13(normed)))
        return ops.add_rms_norm(h, delta, self.norm.weight, eps)[1]

    def prefill(self, tokens: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Fresh sequences into cache rows `slots`: tokens `[N, T]` right-padded, `lengths[N]` real lengths.

        Returns the logits `[N, rows]` at each sequence's last real token. Padding positions write junk
        into the cache beyond each length; lengths mask it, and decoding overwrites it."""
        n, t = tokens.shape
        cos, sin = self.cos[:t][None, None], self.sin[:t][None, None]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self.ops.rope(q, k, cos, sin)
            self.write_kv(i, slots, slice(0, t), k, v)
            # Causal within the prompt is all a fresh sequence needs; padding sits after the real tokens.
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        normed = self._layers(self.tok_embeddings(tokens), attend)
        last = normed[torch.arange(n, device=tokens.device), lengths - 1]
        return self.logits(last)

    def decode(self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per sequence: tokens, slots, positions `[B]` (position = tokens already cached).

        Static shapes and no host syncs, so the call can be captured in a CUDA graph. Returns `[B, rows]`."""
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]
        lengths = positions + 1
        k_cache, v_cache = self.caches()
        if self.attention == "triton":
            from orpheus_tts.model.decode_attention import decode_attention
        else:
            max_seq = k_cache.shape[3]
            mask = (torch.arange(max_seq, device=tokens.device)[None] < lengths[:, None])[:, None, None]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self.ops.rope(q, k, cos, sin)
            self.write_kv(i, slots, positions, k[:, :, 0], v[:, :, 0])
            if self.attention == "triton":
                k_scale = None if self.k_scale is None else self.k_scale[i]
                v_scale = None if self.v_scale is None else self.v_scale[i]
                return decode_attention(q[:, :, 0], k_cache[i], v_cache[i], slots, lengths, k_scale=k_scale,
                                        v_scale=v_scale)[:, :, None]  # fmt: skip
            # Reads each slot's whole cache row; the Triton kernel reads only the valid prefix.
            k_all, v_all = self.read_kv_rows(i, slots, q.dtype)
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)

        normed = self._layers(self.tok_embeddings(tokens)[:, None], attend)
        return self.logits(normed[:, 0])


# -- weights ------------------------------------------------------------------------------------------


def _projection(hf: dict[str, torch.Tensor], names: list[str], ours: str) -> dict[str, torch.Tensor]:
    """HF projections `names` (`<m>.weight`) -> one fused `ours`."""
    return {f"{ours}.weight": torch.cat([hf[f"{n}.weight"] for n in names])}


def hf_to_fused(hf: dict[str, torch.Tensor], shape: LlamaShape) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM parameter names -> ours (q/k/v and gate/up concatenated)."""
    out = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    if not shape.tie_word_embeddings:
        out["output.weight"] = hf["lm_head.weight"]
    for n in range(shape.num_layers):
        p, q = f"model.layers.{n}.", f"layers.{n}."
        out |= _projection(hf, [p + f"self_attn.{x}_proj" for x in "qkv"], q + "wqkv")
        out |= _projection(hf, [p + "self_attn.o_proj"], q + "wo")
        out |= _projection(hf, [p + "mlp.gate_proj", p + "mlp.up_proj"], q + "w13")
        out |= _projection(hf, [p + "mlp.down_proj"], q + "w2")
        out[q + "attention_norm.weight"] = hf[p + "input_layernorm.weight"]
        out[q + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
    return out


def read_safetensors(model_dir: pathlib.Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, floating ones cast to `dtype` (int8 weights stay int8)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    tensors = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                tensors[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return tensors


def load_transformer(model_dir: str | pathlib.Path, shape: LlamaShape, device: torch.device,
                     dtype: torch.dtype, linear_dtype: str = "auto") -> Transformer:  # fmt: skip
    """Builds the model on the meta device (no memory) and assigns the checkpoint's tensors.

    An int8 weight-only checkpoint (int8_weights.py) is dequantised here, once. linear_dtype "fp8" then
    turns every layer's projections into Fp8Linear (Hopper's FP8 GEMMs); "auto" keeps `dtype`."""
    if linear_dtype not in LINEAR_DTYPES:
        raise ValueError(f"linear_dtype must be one of {', '.join(LINEAR_DTYPES)}, not {linear_dtype!r}")
    hf = read_safetensors(pathlib.Path(model_dir), device, dtype)
    if int8_weights.is_int8_checkpoint(hf):
        hf = int8_weights.dequantize_checkpoint(hf, dtype)
    with torch.device("meta"):
        model = Transformer(shape)
    try:
        state = hf_to_fused(hf, shape)
    except KeyError as e:
        raise ValueError(f"checkpoint in {model_dir} lacks tensor {e.args[0]}") from None
    del hf
    model.load_state_dict(state, assign=True, strict=True)
    if linear_dtype == "fp8":
        use_fp8_linears(model)
    return model.eval().requires_grad_(False)
