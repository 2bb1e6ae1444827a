"""Bounds on what the quantised levers of issue #17 do to the model's numbers: the int8 and FP8 KV caches
and the FP8 projections, each against the unquantised model, through the serving paths (prefill into
slots, decode steps against the cache; model/numerics.py). The tiny random model, fp32, on the CPU (the
SDPA path over the dequantised cache; FP8 GEMMs emulated in fp32). Random weights give nearly flat
logits, so argmax agreement is harsher here than on the trained model. benchmarks/lever_check.py measures
the same on the GPU, on the 3.3B shape, before the session script times a lever.
"""

import pytest
import torch

from orpheus_tts.model import numerics
from orpheus_tts.model.kv_quant import FP8, to_fp8
from orpheus_tts.model.llama import Fp8Linear, load_transformer, quantize_fp8_rows
from orpheus_tts.model.model_spec import load_model_spec

SLOTS, MAX_SEQ, STEPS = 3, 48, 24


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    spec = load_model_spec(tiny_model_dir)
    model = load_transformer(tiny_model_dir, spec.shape, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    audio = (spec.audio_offset, spec.audio_end)
    prompts = torch.randint(*audio, (SLOTS, 10), generator=g)
    forced = torch.randint(*audio, (SLOTS, STEPS), generator=g)
    model.setup_caches(SLOTS, MAX_SEQ)
    return model, prompts, forced, numerics.measure(model, prompts, forced)


# kv_cache_dtype, linears -> (largest relative logits error, least teacher-forced argmax agreement)
BOUNDS = {
    ("int8", "auto"): (0.02, 0.9),
    ("fp8", "auto"): (0.05, 0.85),
    ("auto", "fp8"): (0.15, 0.7),
    ("fp8", "fp8"): (0.15, 0.7),
}


@pytest.mark.parametrize(("kv", "linears"), list(BOUNDS))
def test_quantised_variant_stays_close(setup, tiny_model_dir, kv, linears):
    model, prompts, forced, ref = setup
    if linears == "fp8":
        model = load_transformer(tiny_model_dir, model.shape, torch.device("cpu"), torch.float32, linear_dtype="fp8")
        assert isinstance(model.layers[0].wqkv, Fp8Linear)
    model.setup_caches(SLOTS, MAX_SEQ, kv_cache_dtype=kv)
    got = numerics.compare(*ref, *numerics.measure(model, prompts, forced))
    max_err, min_top1 = BOUNDS[(kv, linears)]
    assert got.logits_rel_err < max_err, got
    assert got.top1_agreement >= min_top1, got
    assert got.logits_rel_err > 0  # the variant really ran quantised


def test_unquantised_cache_agrees_exactly(setup):
    model, prompts, forced, ref = setup
    model.setup_caches(SLOTS, MAX_SEQ, kv_cache_dtype="auto")
    got = numerics.compare(*ref, *numerics.measure(model, prompts, forced))
    assert got.logits_rel_err == 0 and got.greedy_agreement == 1.0


def test_cache_storage_dtypes(setup):
    model = setup[0]
    model.setup_caches(2, 16, kv_cache_dtype="int8")
    assert model.k_cache.dtype == torch.int8 and model.k_scale.shape == model.k_cache.shape[:-1]
    model.setup_caches(2, 16, kv_cache_dtype="fp8")
    assert model.k_cache.dtype == FP8 and model.k_scale is None
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        model.setup_caches(2, 16, kv_cache_dtype="int4")


def test_fp8_saturates_instead_of_nan():
    x = torch.tensor([1e4, -1e4, 1.0])
    assert torch.isfinite(to_fp8(x).float()).all() and to_fp8(x).float()[0] == 448.0


def test_fp8_rows_roundtrip():
    w = torch.randn(32, 64) * torch.logspace(-3, 2, 32)[:, None]  # rows of very different magnitudes
    q, scale = quantize_fp8_rows(w)
    back = q.float() * scale[:, None]
    assert ((back - w).abs() <= w.abs().amax(1, keepdim=True) * 2**-3).all()  # e4m3: 3 mantissa bits


def test_linear_dtype_is_checked(tiny_model_dir):
    spec = load_model_spec(tiny_model_dir)
    with pytest.raises(ValueError, match="linear_dtype"):
        load_transformer(tiny_model_dir, spec.shape, torch.device("cpu"), torch.float32, linear_dtype="int4")


@pytest.mark.parametrize(("kv", "linears"), [("int8", "fp8"), ("fp8", "auto")])
async def test_engine_serves_with_the_levers(tiny_model_dir, kv, linears):
    """ORPHEUS_KV_CACHE_DTYPE / ORPHEUS_LINEAR_DTYPE reach the model through the engine, and seeded requests
    give the same tokens alone and batched (no slot leaks through the quantised cache or its scales)."""
    import asyncio

    from orpheus_tts.config import RuntimeConfig
    from orpheus_tts.engine.interface import GenerationRequest, SamplingParams
    from orpheus_tts.engine.torch_engine import TorchEngine

    cfg = RuntimeConfig(model=str(tiny_model_dir), device="cpu", max_batch_size=3, max_input_len=24,
                        max_output_len=40, kv_cache_dtype=kv, linear_dtype=linears)  # fmt: skip
    engine = TorchEngine(tiny_model_dir, cfg, load_model_spec(tiny_model_dir))
    await engine.start()
    try:
        model = engine.runner.model
        assert model.k_cache.dtype == {"int8": torch.int8, "fp8": FP8}[kv]
        assert isinstance(model.layers[0].w13, Fp8Linear) == (linears == "fp8")
        prompt = [128259, 128000, 83, 64, 25, 467, 475, 128009, 128260, 128261, 128257]
        reqs = [GenerationRequest(f"r{i}", prompt, SamplingParams(max_tokens=21, min_tokens=21, seed=7 + i))
                for i in range(3)]  # fmt: skip

        async def collect(r):
            return [t async for ids in engine.submit(r) for t in ids]

        alone = [await collect(r) for r in reqs]
        together = await asyncio.gather(*(collect(r) for r in reqs))
        assert together == alone and all(len(ids) == 21 for ids in alone)
        for ids in alone:
            assert all(128266 + (i % 7) * 4096 <= t < 128266 + (i % 7 + 1) * 4096 for i, t in enumerate(ids))
    finally:
        await engine.close()


def test_fp8_is_not_refused_on_the_cpu():
    """A CPU emulates FP8 (the tests above); the refusal below sm89 needs a GPU and is not tested here."""
    from orpheus_tts.config import RuntimeConfig
    from orpheus_tts.engine.model_runner import check_fp8_support

    check_fp8_support(RuntimeConfig(kv_cache_dtype="fp8", linear_dtype="fp8"), torch.device("cpu"))


def test_compiled_activation_quantisation_matches_eager(tiny_model_dir):
    """compile_ops() gives the FP8 projections a compiled (fused) activation quantisation; eager it is ~8
    kernels per projection. The compiled function computes the same bits."""
    spec = load_model_spec(tiny_model_dir)
    model = load_transformer(tiny_model_dir, spec.shape, torch.device("cpu"), torch.float32, linear_dtype="fp8")
    model.compile_ops()
    quantizers = {m.quantize for m in model.modules() if isinstance(m, Fp8Linear)}
    assert len(quantizers) == 1 and quantize_fp8_rows not in quantizers
    x = torch.randn(5, 64) * torch.logspace(-2, 2, 5)[:, None]
    (a, sa), (b, sb) = quantizers.pop()(x), quantize_fp8_rows(x)
    assert torch.equal(a.float(), b.float()) and torch.equal(sa, sb)
