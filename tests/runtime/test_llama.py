import pathlib
import shutil

import pytest
import torch

from orpheus_tts.model.decode_attention import decode_attention_reference
from orpheus_tts.model.llama import load_transformer
from orpheus_tts.model.model_spec import load_model_spec

PROMPTS = [[128259, 128000, 83, 64, 25, 467, 475, 128009, 128260, 128261, 128257],
           [128259, 128000, 500, 501, 128009, 128260, 128261, 128257],
           [128259, 128000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 128009, 128260, 128261, 128257]]  # fmt: skip
STEPS = 5


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: pathlib.Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def spec(tiny_model_dir):
    return load_model_spec(tiny_model_dir)


def _ours(tiny_model_dir, spec, slots=4, max_seq=64, rows=None):
    model = load_transformer(tiny_model_dir, spec.shape, torch.device("cpu"), torch.float32)
    model.setup_caches(slots, max_seq)
    if rows is not None:
        model.set_output_rows(rows)
    return model


def _hf_reference(hf_model, prompt: list[int], continuation: list[int]) -> list[torch.Tensor]:
    """HF logits after the prompt, then after each continuation token (incremental decoding, KV cache)."""
    with torch.no_grad():
        out = hf_model(torch.tensor([prompt]), use_cache=True)
        logits, past = [out.logits[0, -1]], out.past_key_values
        for tok in continuation:
            out = hf_model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            logits.append(out.logits[0, -1])
            past = out.past_key_values
    return logits


def test_prefill_and_decode_match_hf(tiny_model_dir, spec, hf_model):
    model = _ours(tiny_model_dir, spec)
    # Prompts of different lengths, prefilled together (right-padded) into non-contiguous slots.
    slots = torch.tensor([3, 0, 2])
    lengths = torch.tensor([len(p) for p in PROMPTS])
    tokens = torch.zeros(len(PROMPTS), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        tokens[i, : len(p)] = torch.tensor(p)
    continuation = torch.randint(128266, 156938, (len(PROMPTS), STEPS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = [model.prefill(tokens, slots, lengths)]
        for step in range(STEPS):
            ours.append(model.decode(continuation[:, step], slots, lengths + step))
    for i, p in enumerate(PROMPTS):
        ref = _hf_reference(hf_model, p, continuation[i].tolist())
        for step, (a, b) in enumerate(zip([o[i] for o in ours], ref, strict=True)):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"prompt {i} step {step}")


def test_output_rows_subset(tiny_model_dir, spec):
    rows = torch.cat([torch.arange(spec.audio_offset, spec.audio_end), torch.tensor(spec.stop_ids)])
    full, sub = _ours(tiny_model_dir, spec), _ours(tiny_model_dir, spec, rows=rows)
    tokens, slots, lengths = torch.tensor([PROMPTS[0]]), torch.tensor([1]), torch.tensor([len(PROMPTS[0])])
    with torch.no_grad():
        a, b = full.prefill(tokens, slots, lengths), sub.prefill(tokens, slots, lengths)
        assert b.shape == (1, spec.audio_rows + 1)
        torch.testing.assert_close(b, a[:, rows])
        a = full.decode(torch.tensor([128300]), slots, lengths)
        b = sub.decode(torch.tensor([128300]), slots, lengths)
        torch.testing.assert_close(b, a[:, rows])


def test_decode_slot_isolation_and_reference_attention(tiny_model_dir, spec):
    """A slot's logits do not depend on what other slots hold; SDPA path == decode_attention_reference."""
    model = _ours(tiny_model_dir, spec)
    p = torch.tensor([PROMPTS[1]])
    n = p.shape[1]
    with torch.no_grad():
        model.prefill(p, torch.tensor([2]), torch.tensor([n]))
        alone = model.decode(torch.tensor([130000]), torch.tensor([2]), torch.tensor([n]))
        model.prefill(torch.tensor([PROMPTS[2]]), torch.tensor([1]), torch.tensor([len(PROMPTS[2])]))
        model.prefill(p, torch.tensor([2]), torch.tensor([n]))
        both = model.decode(torch.tensor([140000, 130000]), torch.tensor([1, 2]), torch.tensor([len(PROMPTS[2]), n]))
    torch.testing.assert_close(both[1], alone[0])

    q = torch.randn(2, spec.shape.num_heads, spec.shape.head_dim)
    slots, lengths = torch.tensor([1, 2]), torch.tensor([len(PROMPTS[2]) + 1, n + 1])
    mask = (torch.arange(model.k_cache.shape[3])[None] < lengths[:, None])[:, None, None]
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], model.k_cache[0, slots], model.v_cache[0, slots], attn_mask=mask, enable_gqa=True
    )[:, :, 0]
    ref = decode_attention_reference(q, model.k_cache[0], model.v_cache[0], slots, lengths)
    torch.testing.assert_close(sdpa, ref, atol=1e-5, rtol=1e-5)


def test_int8_weight_only_checkpoint(tiny_model_dir, spec, tmp_path):
    """build_engine.py's int8 format loads (dequantised once, at load), and computes exactly what its
    dequantised weights compute."""
    import shutil

    from safetensors.torch import load_file, save_file

    from orpheus_tts.model.int8_weights import quantize_model_dir_int8

    q_dir, dq_dir = tmp_path / "int8", tmp_path / "dequant"
    for d in (q_dir, dq_dir):
        d.mkdir()
        shutil.copy(tiny_model_dir / "model.safetensors", d / "model.safetensors")
    quantize_model_dir_int8(q_dir)
    q = load_file(q_dir / "model.safetensors")
    dequant = {k: v for k, v in q.items() if not k.endswith((".qweight", ".scales"))}
    for name in [k for k in q if k.endswith(".qweight")]:
        base = name.removesuffix(".qweight")
        dequant[base + ".weight"] = q[name].float() * q[base + ".scales"].float()[:, None]
    save_file(dequant, dq_dir / "model.safetensors")

    int8 = load_transformer(q_dir, spec.shape, torch.device("cpu"), torch.float32)
    ref = load_transformer(dq_dir, spec.shape, torch.device("cpu"), torch.float32)
    assert int8.layers[0].wqkv.weight.dtype == torch.float32  # dequantised once, not at every forward
    tokens, slots, lengths = torch.tensor([PROMPTS[0]]), torch.tensor([0]), torch.tensor([len(PROMPTS[0])])
    for m in (int8, ref):
        m.setup_caches(1, 32)
    with torch.no_grad():
        a, b = int8.prefill(tokens, slots, lengths), ref.prefill(tokens, slots, lengths)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        step = torch.tensor([130000])
        a, b = int8.decode(step, slots, lengths), ref.decode(step, slots, lengths)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_compiled_ops_generate_the_same_tokens(tiny_model_dir):
    """What the engine runs on CUDA (torch.compile'd LayerOps and sampler, dynamic shapes, fullgraph): here
    on the CPU, prefill and decode at several batch sizes give the eager path's tokens."""
    from orpheus_tts.engine.sampling import SlotParams, SlotSampler, output_rows
    from orpheus_tts.engine.step_graphs import DeviceState, decode_step, prefill_step
    from orpheus_tts.model.llama import LayerOps

    spec = load_model_spec(tiny_model_dir)
    model = load_transformer(tiny_model_dir, spec.shape, torch.device("cpu"), torch.float32)
    model.setup_caches(5, 64)
    model.set_output_rows(output_rows(spec))

    def generate(compiled: bool) -> list[int]:
        model.ops = LayerOps()
        sampler = SlotSampler(spec, 5, torch.device("cpu"))
        if compiled:
            model.compile_ops()
            sampler.compile()
        state = DeviceState(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
        for slot in range(4):
            sampler.reset(slot, SlotParams(0.6, 0.8, 1.3, 0, 7 + slot))
        tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0], [8, 9, 0, 0]])
        out = [prefill_step(model, sampler, state, tokens, torch.tensor([0, 1, 2]), torch.tensor([4, 3, 2]))]
        out.append(prefill_step(model, sampler, state, tokens[:1, :3], torch.tensor([3]), torch.tensor([3])))
        for _ in range(8):
            out.append(decode_step(model, sampler, state, torch.tensor([0, 1, 2, 3])))
            out.append(decode_step(model, sampler, state, torch.tensor([1])))
        return torch.cat(out).tolist()

    with torch.inference_mode():
        assert generate(compiled=True) == generate(compiled=False)
