"""`orpheus-tts make-tiny-model OUT [--seed N]`: a random-weight model in the exact Orpheus layout.

Everything that reads a model (loader, engines, prompts, SNAC decoding, engine builds) runs on this in
tests and CPU demos: the real vocabulary size and special ids, so real token ids work end to end, but
tiny dims, so it builds in seconds. Random weights speak noise; callers bound output with max_tokens.
Same seed -> same files (weights, tokenizer, configs).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

from orpheus_tts.audio import SAMPLE_RATE
from orpheus_tts.model.model_spec import INLINE_TAGS, ORPHEUS_JSON, ModelSpec, spec_to_orpheus_json

# The real SNAC 24 kHz config (hubertsiuzdak/snac_24khz), so decoding code sees real shapes and rates.
SNAC_24KHZ_CONFIG = {
    "sampling_rate": SAMPLE_RATE,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}

# head_dim 16 is the smallest the Triton decode-attention kernel's tl.dot accepts.
TINY_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
# Orpheus 3B's own dims (Llama-3.2-3B): for GPU benchmarks with random weights at the real cost.
ORPHEUS_3B_DIMS = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
}
SHAPES = {"tiny": TINY_DIMS, "orpheus-3b": ORPHEUS_3B_DIMS}

# Trained into the tiny BPE so common English words are single tokens, like with the real tokenizer
# (~4 characters per token), which keeps prompt-chunking tests realistic.
_CORPUS = """
The quick brown fox jumps over the lazy dog. Hello world, this is a test of the speech system.
She sells sea shells by the sea shore. How are you doing today? I am doing very well, thank you.
It was the best of times, it was the worst of times, it was the age of wisdom and of foolishness.
We stream audio to many users at once, one sentence after another, with low latency and good voices.
Please call me back when you have a moment. The weather is nice and the sun is shining again.
Numbers like one, two, three, four, five, six, seven, eight, nine and ten are spoken out loud.
"""


def hf_config(spec: ModelSpec, dims: dict[str, int] = TINY_DIMS) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.shape.vocab_size,
        **dims,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": spec.bos,
        "eos_token_id": spec.end_of_speech,
        "pad_token_id": spec.pad,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def random_weights(config: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM parameter names; no lm_head (tied embeddings)."""
    h, i = config["hidden_size"], config["intermediate_size"]
    d, nq, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std).to(torch.bfloat16)

    # Tiny: larger than HF's 0.02 init so that logits are not nearly uniform: clear greedy choices make
    # batched-vs-single comparisons and sampling tests meaningful. Full size: HF's 0.02, since 0.1 over
    # 28 layers of width 3072 overflows bf16.
    big = h > 256
    w_std, e_std = (0.02, 0.02) if big else (0.1, 0.3)
    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], h, std=e_std)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        weights[p + "self_attn.q_proj.weight"] = normal(nq * d, h, std=w_std)
        weights[p + "self_attn.k_proj.weight"] = normal(nkv * d, h, std=w_std)
        weights[p + "self_attn.v_proj.weight"] = normal(nkv * d, h, std=w_std)
        weights[p + "self_attn.o_proj.weight"] = normal(h, nq * d, std=w_std)
        weights[p + "mlp.gate_proj.weight"] = normal(i, h, std=w_std)
        weights[p + "mlp.up_proj.weight"] = normal(i, h, std=w_std)
        weights[p + "mlp.down_proj.weight"] = normal(h, i, std=w_std)
        weights[p + "input_layernorm.weight"] = (1 + normal(h, std=0.1).float()).to(torch.bfloat16)
        weights[p + "post_attention_layernorm.weight"] = (1 + normal(h, std=0.1).float()).to(torch.bfloat16)
    weights["model.norm.weight"] = (1 + normal(h, std=0.1).float()).to(torch.bfloat16)
    return weights


def special_tokens(spec: ModelSpec) -> dict[str, int]:
    """Llama 3's 256 special tokens, then Orpheus's `<custom_token_N>` up to the end of the vocabulary."""
    names = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
             128007: "<|end_header_id|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>"}  # fmt: skip
    tokens = {names.get(i, f"<|reserved_special_token_{i - 128000}|>"): i for i in range(128000, 128256)}
    tokens.update({f"<custom_token_{n}>": 128256 + n for n in range(spec.shape.vocab_size - 128256)})
    return tokens


def build_tokenizer_json(spec: ModelSpec, vocab_size: int = 600) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    voices = [f"{v}: {v}: {v}:" for v in spec.voices]
    tok.train_from_iterator([*_CORPUS.split("\n"), *INLINE_TAGS, *voices], trainer)
    data = json.loads(tok.to_str())
    specials = special_tokens(spec)
    # tokenizers assigns an added token the id the model's vocabulary gives it, so the special tokens go
    # into the BPE vocabulary at their Orpheus ids (a gap between the trained ids and 128000 is fine).
    data["model"]["vocab"].update(specials)
    data["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for c, i in specials.items()
    ]  # fmt: skip
    # Like Llama 3's: encode() with special tokens prepends BOS.
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [spec.bos],
                                                  "tokens": ["<|begin_of_text|>"]}},
    }  # fmt: skip
    text = json.dumps(data, ensure_ascii=False)
    Tokenizer.from_str(text)  # fail here, not in the server, if the JSON is not loadable
    return text


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<custom_token_7>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
    }


def write_snac(out: pathlib.Path, seed: int) -> None:
    import snac  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    # SNAC initialises from the global RNG: fork it so that callers' random state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = snac.SNAC(**SNAC_24KHZ_CONFIG)
    (out / "config.json").write_text(json.dumps(SNAC_24KHZ_CONFIG, indent=2) + "\n")
    torch.save(model.state_dict(), out / "pytorch_model.bin")


def make_tiny_model(out: str | pathlib.Path, seed: int = 0, *, with_snac: bool = True,
                    shape: str = "tiny") -> pathlib.Path:  # fmt: skip
    from safetensors.torch import save_file

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(random_weights=True)
    config = hf_config(spec, SHAPES[shape])
    generator = torch.Generator().manual_seed(seed)
    save_file(random_weights(config, generator), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": spec.bos, "eos_token_id": list(spec.stop_ids)}, indent=2) + "\n"
    )
    (out / "tokenizer.json").write_text(build_tokenizer_json(spec))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, indent=2) + "\n"
    )
    (out / ORPHEUS_JSON).write_text(json.dumps(spec_to_orpheus_json(spec), indent=2) + "\n")
    if with_snac:
        write_snac(out / "snac", seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts make-tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-snac", action="store_true", help="skip the SNAC decoder (OUT/snac)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                        help="orpheus-3b: the real dims (3.3B parameters, 6.6 GB) for GPU benchmarks")  # fmt: skip
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out, args.seed, with_snac=not args.no_snac, shape=args.shape)
    print(path)
    return 0
