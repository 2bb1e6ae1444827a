"""SNAC 24 kHz decode cost on the GPU per batch size and window length, as the server runs it and as SNAC
ships, eager and in CUDA graphs.

Variants: `as-shipped` (SNAC's modules: weight_norm recomputed per call, TorchScript Snake), `folded`
(snac_decoder.fold_weight_norm: weights folded once, what the server runs uncompiled), `compiled` (folded,
plain Snake, torch.compile'd: what the server runs by default). Random weights from the real config (the cost does
not depend on the weights). A "window" is the number of frames decoded per stream per call (context
frames included); audio per call is batch * new frames.

    python benchmarks/snac_bench.py --json $OUT/snac.json
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
from snac import SNAC
from step_bench import graph_of  # benchmarks/ is the script directory
from triton.testing import do_bench

from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG
from orpheus_tts.speech.snac_decoder import disable_noise, fold_weight_norm, plain_snake


def codes_for(batch: int, frames: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randint(0, 4096, (batch, frames * n), device=device, generator=g) for n in (1, 2, 4)]


def copies(dtype: torch.dtype, n: int) -> list[SNAC]:
    """n SNACs with the same random weights. Not deepcopies: removing a parametrization edits the class,
    which copies share."""
    models = [SNAC(**SNAC_24KHZ_CONFIG).eval().to("cuda", dtype) for _ in range(n)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return models


def same_function(dtype: torch.dtype) -> dict[str, float]:
    """Relative max error of folded and compiled-folded SNAC against SNAC as shipped, with the noise blocks
    off (they draw fresh noise every call, so only noise-free decodes can be compared)."""
    shipped, folded = (disable_noise(m) for m in copies(dtype, 2))
    fold_weight_norm(folded)
    codes = codes_for(16, 7, "cuda")
    want = shipped.decode(codes)
    rel = lambda got: float((got - want).abs().max() / want.abs().max())  # noqa: E731
    folded_err = rel(folded.decode(codes))
    return {"folded": folded_err, "compiled": rel(torch.compile(plain_snake(folded).decode, dynamic=True)(codes))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--windows", default="4,7")
    ap.add_argument("--dtypes", default="float32")
    args = ap.parse_args()

    rows, checks = [], {}
    print(f"{'dtype':>8} {'variant':>10} {'window':>6} {'batch':>5} {'eager ms':>9} {'graph ms':>9} {'ms/frame':>9}")
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        shipped, folded, to_compile = copies(dtype, 3)
        fold_weight_norm(folded)
        with torch.inference_mode():
            checks[str(dtype)] = same_function(dtype)
            print(f"max |variant - as-shipped| / max |as-shipped|, noise off: {checks[str(dtype)]}", flush=True)
            compiled = torch.compile(plain_snake(fold_weight_norm(to_compile)).decode, dynamic=True)
            variants = {"as-shipped": shipped.decode, "folded": folded.decode, "compiled": compiled}
            for window in map(int, args.windows.split(",")):
                for batch in map(int, args.batches.split(",")):
                    codes = codes_for(batch, window, "cuda")
                    for name, decode in variants.items():
                        run = functools.partial(decode, codes)
                        eager = do_bench(run, return_mode="median") if name != "compiled" else None
                        graph = do_bench(graph_of(run).replay, return_mode="median")
                        rows.append({"dtype": str(dtype), "variant": name, "window": window, "batch": batch,
                                     "eager_ms": eager, "graph_ms": graph})  # fmt: skip
                        print(f"{str(dtype)[6:]:>8} {name:>10} {window:>6} {batch:>5} "
                              f"{eager if eager is not None else float('nan'):>9.2f} {graph:>9.2f} "
                              f"{graph / (batch * window):>9.4f}", flush=True)  # fmt: skip
        del shipped, folded, to_compile, compiled, variants
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "checks": checks, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
