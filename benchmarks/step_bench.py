"""One decode step of the torch engine per batch size, on an Orpheus-shaped model with random weights,
against the time of its linear layers alone (the floor: the weights must be read once per step).

The step is the engine's own `decode_step` (model + on-device sampling), captured in a CUDA graph as the
engine does, with each slot's context length drawn around `--mean-len` (prompt ~40 + half of 600).
Variants: decode attention (triton | sdpa) x elementwise ops (eager | compiled, i.e. torch.compile'd
LayerOps and sampler as the engine runs them by default). The compiled variant's logits are checked
against eager ones.

    python benchmarks/step_bench.py --json $OUT/step.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from orpheus_tts.engine.cuda_graphs import capture
from orpheus_tts.engine.sampling import SlotParams, SlotSampler, draw, output_rows
from orpheus_tts.engine.step_graphs import DeviceState, PrefillGraphs, decode_step, prefill_step
from orpheus_tts.model.llama import LayerOps, Transformer
from orpheus_tts.model.model_spec import ModelSpec

TOKENS_PER_SECOND_REALTIME = 82.03  # 7 tokens per 2048-sample frame at 24 kHz


def random_model(spec: ModelSpec) -> Transformer:
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Transformer(spec.shape)
    torch.set_default_dtype(torch.float32)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.eval().requires_grad_(False)


def graph_of(fn) -> torch.cuda.CUDAGraph:
    return capture(fn, None)[0]


def linear_only(model: Transformer, batch: int) -> float:
    x = torch.randn(batch, model.shape.hidden_size, device="cuda", dtype=torch.bfloat16)
    inter = torch.randn(batch, model.shape.intermediate_size, device="cuda", dtype=torch.bfloat16)
    attn = torch.randn(batch, model.shape.num_heads * model.shape.head_dim, device="cuda", dtype=torch.bfloat16)

    def run():
        for layer in model.layers:
            F.linear(x, layer.wqkv.weight)
            F.linear(attn, layer.wo.weight)
            F.linear(x, layer.w13.weight)
            F.linear(inter, layer.w2.weight)
        F.linear(x, model.out_weight)

    return do_bench(graph_of(run).replay, return_mode="median")


def step_time(model: Transformer, sampler: SlotSampler, state: DeviceState, batch: int, mean_len: int) -> float:
    slots = torch.arange(batch, device="cuda")
    lo, hi = max(1, mean_len // 8), 2 * mean_len - mean_len // 8
    state.lengths[:batch] = torch.randint(lo, hi, (batch,), device="cuda")
    for s in range(batch):
        sampler.reset(s, SlotParams(0.6, 0.8, 1.3, 10_000, s))  # min_tokens: never stop
    graph = graph_of(lambda: decode_step(model, sampler, state, slots))
    return do_bench(graph.replay, warmup=50, rep=200, return_mode="median")


def profile_step(model: Transformer, sampler: SlotSampler, state: DeviceState, batch: int, top: int = 18) -> list:
    """Where an (eager) decode step's GPU time goes, by kernel: the graph replays the same kernels."""
    from torch.profiler import ProfilerActivity, profile

    slots = torch.arange(batch, device="cuda")
    for _ in range(3):
        decode_step(model, sampler, state, slots)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            decode_step(model, sampler, state, slots)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        device_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if device_us > 0 and e.count > 0:
            rows.append({"kernel": e.key[:90], "ms_per_step": device_us / 5 / 1000, "calls_per_step": e.count / 5})
    rows.sort(key=lambda r: -r["ms_per_step"])
    print(f"\ndecode step at B={batch}, GPU time by kernel (eager, per step):")
    for r in rows[:top]:
        print(f"  {r['ms_per_step']:7.3f} ms  x{r['calls_per_step']:5.0f}  {r['kernel']}")
    return rows[:top]


def prefill_times(model: Transformer, sampler: SlotSampler, state: DeviceState, n: int, t: int,
                  graphs: PrefillGraphs) -> dict[str, float]:  # fmt: skip
    """Wall time (host work included) of one prefill of n prompts of t tokens, eager and as the engine
    replays it from a CUDA graph."""
    import time

    tokens = torch.randint(0, 1000, (n, t), device="cuda")
    slots, lengths = torch.arange(n, device="cuda"), torch.full((n,), t, device="cuda")
    prompts = tokens.tolist()
    runs = {"eager": lambda: prefill_step(model, sampler, state, tokens, slots, lengths),
            "graph": lambda: graphs.run(prompts, list(range(n)))}  # fmt: skip
    out = {}
    for name, run in runs.items():
        times = []
        for _ in range(7):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[name] = 1000 * sorted(times[2:])[2]
    return out


def profile_prefill(model: Transformer, sampler: SlotSampler, state: DeviceState, n: int, t: int, top: int = 12):
    """Host-side (CPU) time of one prefill by operator: where a slow prefill's time goes."""
    from torch.profiler import ProfilerActivity, profile

    tokens = torch.randint(0, 1000, (n, t), device="cuda")
    slots, lengths = torch.arange(n, device="cuda"), torch.full((n,), t, device="cuda")
    prefill_step(model, sampler, state, tokens, slots, lengths)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill_step(model, sampler, state, tokens, slots, lengths)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=top)
    print(table)
    return table


def compiled_vs_eager(model: Transformer, state: DeviceState, batch: int) -> float:
    """Max |compiled - eager| of one decode's logits, relative to the eager logits' max magnitude."""
    slots = torch.arange(batch, device="cuda")
    positions = state.lengths[:batch].clone()
    compiled = model.ops
    out = []
    for ops in (LayerOps(), compiled):
        model.ops = ops
        out.append(model.decode(state.last_token[:batch], slots, positions).float())
    model.ops = compiled
    return float((out[1] - out[0]).abs().max() / out[0].abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--batches", default="1,16,64,128,192,256,320,384")
    ap.add_argument("--mean-len", type=int, default=340)
    ap.add_argument("--max-seq", type=int, default=48 + 1024)
    ap.add_argument("--profile-batch", type=int, default=256)
    ap.add_argument("--variants", default="triton-eager,triton-compiled,sdpa-eager")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    spec = ModelSpec()
    model = random_model(spec)
    model.set_output_rows(output_rows(spec))
    rows, profile_rows = [], []  # profile: per variant with Triton attention
    with torch.inference_mode():
        floors = {b: linear_only(model, b) for b in batches}
        for variant in args.variants.split(","):
            attention, ops = variant.split("-")
            slots = max(batches) + 1
            model.setup_caches(slots, args.max_seq, attention=attention)
            sampler = SlotSampler(spec, slots, torch.device("cuda"))
            model.ops, sampler.draw = LayerOps(), draw
            if ops == "compiled":
                model.compile_ops()
                sampler.compile()
            state = DeviceState(
                last_token=torch.full((slots,), spec.audio_offset, dtype=torch.long, device="cuda"),
                lengths=torch.zeros(slots, dtype=torch.long, device="cuda"),
            )
            for b in batches:
                ms = step_time(model, sampler, state, b, args.mean_len)
                streams = b / (ms / 1000) / TOKENS_PER_SECOND_REALTIME
                rows.append({"attention": attention, "ops": ops, "batch": b, "step_ms": ms, "linear_only_ms": floors[b],
                             "tokens_per_s": b / (ms / 1000), "realtime_streams": streams})  # fmt: skip
                print(f"{variant:>15} B={b:>3} step {ms:7.2f} ms  linear-only {floors[b]:6.2f} ms  "
                      f"{b / (ms / 1000):8.0f} tok/s  = {streams:6.1f} real-time streams", flush=True)  # fmt: skip
            prefill_graphs = PrefillGraphs(model, sampler, state, 32, 48, slots - 1, capture=True)
            for n in (1, 8, 32):
                ms = prefill_times(model, sampler, state, n, 32, prefill_graphs)
                rows.append({"attention": attention, "ops": ops, "prefill_prompts": n, "prompt_tokens": 32,
                             "prefill_ms": ms})  # fmt: skip
                print(f"{variant:>15} prefill {n:>2} x 32 tokens, wall with host work: {ms['eager']:7.2f} ms eager, "
                      f"{ms['graph']:7.2f} ms graph", flush=True)  # fmt: skip
            del prefill_graphs
            if attention == "triton":
                rows.append({"variant": variant, "prefill_profile": profile_prefill(model, sampler, state, 1, 32)})
            if ops == "compiled":
                rel = compiled_vs_eager(model, state, 64)
                print(f"compiled vs eager logits: max relative difference {rel:.2e}", flush=True)
                rows.append({"attention": attention, "ops": ops, "check": "logits max rel diff vs eager", "value": rel})
            if attention == "triton" and args.profile_batch:
                kernels = profile_step(model, sampler, state, args.profile_batch)
                profile_rows.append({"variant": variant, "kernels": kernels})
            model.k_cache = model.v_cache = None
            del sampler, state
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "mean_len": args.mean_len, "rows": rows,
                       "profile_batch": args.profile_batch, "profile": profile_rows}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
