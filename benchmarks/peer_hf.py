"""The naive peer: Hugging Face transformers `generate` on the same Orpheus-shaped random model.

What a user gets from the model card's recipe (bf16, dynamic KV cache, sampling with Orpheus's settings, one
batch at a time): for each batch size B, B sequences of `--tokens` new tokens from one `generate` call.
Reported per B: aggregate tokens/s, each sequence's own tokens/s, and how many real-time streams that is
(a stream needs 82.03 tokens/s: 7 tokens per 2048-sample frame at 24 kHz). `realtime_streams` counts B only
when every sequence of the batch is itself faster than real time; `aggregate_realtime_equivalent` is the
generous figure (aggregate tokens/s / 82.03), which ignores that a batch only finishes together.

    python benchmarks/peer_hf.py --model-dir /tmp/orpheus-3b-random --json $OUT/peer.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

TOKENS_PER_SECOND_REALTIME = 82.03
PROMPT_LEN = 30  # a short sentence with the voice and the special tokens around it


def measure(model: torch.nn.Module, batch: int, tokens: int, vocab: int) -> dict:
    prompt = torch.randint(1000, vocab // 2, (batch, PROMPT_LEN), device="cuda")
    kwargs = dict(do_sample=True, temperature=0.6, top_p=0.8, repetition_penalty=1.1, max_new_tokens=tokens,
                  min_new_tokens=tokens, attention_mask=torch.ones_like(prompt), pad_token_id=0)  # fmt: skip
    model.generate(prompt[:, :8], **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = out.shape[1] - PROMPT_LEN
    per_stream = generated / seconds
    return {
        "batch": batch,
        "new_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": batch * generated / seconds,
        "stream_tokens_per_s": per_stream,
        "realtime_streams": batch if per_stream >= TOKENS_PER_SECOND_REALTIME else 0,
        "aggregate_realtime_equivalent": batch * per_stream / TOKENS_PER_SECOND_REALTIME,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="/tmp/orpheus-3b-random")
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import transformers

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        row = measure(model, b, args.tokens, vocab)
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["tokens_per_s"])
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "rows": rows,
        "best_tokens_per_s": best["tokens_per_s"],
        "best_realtime_streams": max(r["realtime_streams"] for r in rows),
        "best_aggregate_realtime_equivalent": best["aggregate_realtime_equivalent"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
