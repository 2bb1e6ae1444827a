"""GPU correctness check (and in-situ decode timing) of each model-side lever of issue #17, before the
session script (h200_session.py) times it through the server.

Loads the random 3.3B Orpheus-shaped model once (bf16), and for each lever:
- agreement with the server's default (bf16 weights, bf16 KV cache, Triton attention): teacher-forced logits
  error, argmax agreement, free-running greedy agreement (model/numerics.py), next to the noise floor of the
  default itself (the same bf16 model through SDPA instead of the Triton kernel);
- the decode step of the bare model (no sampling, ops not compiled) replayed from a CUDA graph at
  `--time-batch` slots with contexts around 340, in ms: the lever's effect on the step without the server;
- at the end, the attention kernel alone per cache dtype (bf16, int8, fp8) and tile length (64, 128);
- `ok`: finite logits, relative error < 0.25 and argmax agreement >= 0.5. A broken lever (wrong scales,
  garbage cache) gives errors near 1.4 (uncorrelated logits); quantisation noise is well below 0.25.
A lever that raises is recorded as failed and the next one runs. The JSON is rewritten after each lever.

    python benchmarks/lever_check.py --model-dir /tmp/orpheus-3b-random --json $OUT/lever_check.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import torch

from orpheus_tts.engine.sampling import output_rows
from orpheus_tts.model import numerics
from orpheus_tts.model.llama import Transformer, load_transformer, use_fp8_linears
from orpheus_tts.model.model_spec import ModelSpec, load_model_spec

# lever name -> the server environment that turns it on (h200_session.py starts a server with it).
# Model levers are checked here; the others are pure logic, tested in CI.
LEVERS: dict[str, dict[str, str]] = {
    "kv-int8": {"ORPHEUS_KV_CACHE_DTYPE": "int8"},
    "kv-fp8": {"ORPHEUS_KV_CACHE_DTYPE": "fp8"},
    "linear-fp8": {"ORPHEUS_LINEAR_DTYPE": "fp8"},
    "kv-fp8+linear-fp8": {"ORPHEUS_KV_CACHE_DTYPE": "fp8", "ORPHEUS_LINEAR_DTYPE": "fp8"},
    "kv-int8+linear-fp8": {"ORPHEUS_KV_CACHE_DTYPE": "int8", "ORPHEUS_LINEAR_DTYPE": "fp8"},
}
MAX_REL_ERR, MIN_TOP1 = 0.25, 0.5


def model_settings(env: dict[str, str]) -> tuple[str, str]:
    """(kv_cache_dtype, linear_dtype) of a lever's environment."""
    return env.get("ORPHEUS_KV_CACHE_DTYPE", "auto"), env.get("ORPHEUS_LINEAR_DTYPE", "auto")


def passes(agreement: dict[str, float]) -> bool:
    rel = agreement["logits_rel_err"]
    return rel == rel and rel < MAX_REL_ERR and agreement["top1_agreement"] >= MIN_TOP1  # rel == rel: not NaN


def time_decode(model: Transformer, spec: ModelSpec, batch: int, max_seq: int, kv: str, attention: str,
                device: torch.device) -> float:  # fmt: skip
    """ms per decode step of the bare model at `batch` slots, contexts 1..680 (mean ~340), output layer over
    the audio rows as the engine runs it, CUDA graph (on a CPU: one eager step)."""
    model.setup_caches(batch, max_seq, attention=attention, kv_cache_dtype=kv)
    model.set_output_rows(output_rows(spec))
    try:
        return _time_decode(model, batch, max_seq, device)
    finally:
        model.set_output_rows(None)


def _time_decode(model: Transformer, batch: int, max_seq: int, device: torch.device) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(128266, 156938, (batch,), device=device, generator=g)
    slots = torch.arange(batch, device=device)
    positions = torch.randint(1, min(max_seq - 1, 680), (batch,), device=device, generator=g)
    if device.type != "cuda":
        t0 = time.perf_counter()
        model.decode(tokens, slots, positions)
        return 1000 * (time.perf_counter() - t0)
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model.decode(tokens, slots, positions)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model.decode(tokens, slots, positions)
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
    del graph
    return start.elapsed_time(end) / 20


def attention_ms(batch: int, block_ns: list[int], device: torch.device) -> dict:
    """The decode-attention kernel alone at the Orpheus shape (28 layers' worth, ms per step), per cache
    dtype and tile length, contexts 1..680 (mean ~340): whether the 1-byte caches are bandwidth-bound."""
    from triton.testing import do_bench

    from orpheus_tts.model.decode_attention import decode_attention
    from orpheus_tts.model.kv_quant import quantize_kv, to_fp8

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, 24, 128, device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn(batch, 8, 1072, 128, device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn(batch, 8, 1072, 128, device=device, dtype=torch.bfloat16, generator=g)
    slots = torch.arange(batch, device=device, dtype=torch.int32)
    lengths = torch.randint(1, 681, (batch,), device=device, generator=g).to(torch.int32)
    (kq, ks), (vq, vs) = quantize_kv(k), quantize_kv(v)
    caches = {"bf16": (k, v, {}), "int8": (kq, vq, {"k_scale": ks, "v_scale": vs}), "fp8": (to_fp8(k), to_fp8(v), {})}
    ms: dict[str, float] = {}
    for name, (kc, vc, scales) in caches.items():
        for bn in block_ns if name == "int8" else block_ns[:1]:  # the tile length is the int8 question
            fn = lambda: decode_attention(q, kc, vc, slots, lengths, block_n=bn, **scales)  # noqa: B023, E731
            ms[f"{name}_block{bn}"] = 28 * do_bench(fn, warmup=10, rep=40, return_mode="median")
    return {"batch": batch, "ms_per_step": ms, "kv_gbytes_per_step_bf16": 28 * int(lengths.sum()) * 8 * 128 * 4 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="/tmp/orpheus-3b-random")
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--slots", type=int, default=16, help="sequences in the agreement check")
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--time-batch", type=int, default=256, help="0: no timing")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    attention = "triton" if cuda else "sdpa"
    result: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "levers": {},
                    "thresholds": {"max_rel_err": MAX_REL_ERR, "min_top1": MIN_TOP1}}  # fmt: skip

    def write() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    t0 = time.monotonic()
    spec = load_model_spec(args.model_dir)
    model = load_transformer(args.model_dir, spec.shape, device, dtype)
    if cuda:
        model.compile_ops()  # as the engine runs it (ORPHEUS_TORCH_COMPILE's default); the servers' cache hits
    result["load_s"] = time.monotonic() - t0
    g = torch.Generator().manual_seed(0)
    audio = (spec.audio_offset, spec.audio_end)
    prompts = torch.randint(*audio, (args.slots, args.prompt_len), generator=g).to(device)
    forced = torch.randint(*audio, (args.slots, args.steps), generator=g).to(device)
    max_seq = args.prompt_len + args.steps + 1

    def run(kv: str, attn: str) -> tuple[torch.Tensor, torch.Tensor]:
        model.setup_caches(args.slots, max_seq, attention=attn, kv_cache_dtype=kv)
        return numerics.measure(model, prompts, forced)

    ref = run("auto", attention)
    result["noise_floor_sdpa_vs_triton"] = numerics.compare(*ref, *run("auto", "sdpa")).as_dict()
    if args.time_batch:
        result["default_decode_ms"] = time_decode(model, spec, args.time_batch, 1072, "auto", attention, device)
    print(json.dumps(result), flush=True)
    write()
    names = [n for n in args.levers.split(",") if n]
    # Linear levers convert the model in place: every KV-only lever first, then the conversion, once.
    names.sort(key=lambda n: model_settings(LEVERS[n])[1] != "auto")
    fp8_linears = False
    for name in names:
        t0 = time.monotonic()
        kv, linears = model_settings(LEVERS[name])
        entry: dict = {"env": LEVERS[name]}
        try:
            if linears == "fp8" and not fp8_linears:
                use_fp8_linears(model)
                if cuda:
                    model.compile_ops()  # the compiled activation quantisation, as in the engine
                fp8_linears = True
            agreement = numerics.compare(*ref, *run(kv, attention)).as_dict()
            entry |= {"agreement": agreement, "ok": passes(agreement)}
            if args.time_batch:
                entry["decode_ms"] = time_decode(model, spec, args.time_batch, 1072, kv, attention, device)
        except Exception as e:
            entry |= {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = time.monotonic() - t0
        result["levers"][name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "traceback"}}), flush=True)
        write()
        if cuda:
            torch.cuda.empty_cache()
    if cuda and args.time_batch:
        try:
            result["attention"] = attention_ms(args.time_batch, [64, 128], device)
        except Exception as e:  # recorded; the levers' results are already written
            result["attention_error"] = f"{type(e).__name__}: {e}"
        print(json.dumps({"attention": result.get("attention")}), flush=True)
        write()


if __name__ == "__main__":
    main()
