"""SNAC 24 kHz decode cost on the GPU per batch size, window length, dtype, eager vs CUDA graph.

Random weights from the real config (the cost does not depend on the weights). A "window" is the number
of frames decoded per stream per call (context frames included); audio per call is batch * new frames.

    python benchmarks/snac_bench.py --json $OUT/snac.json
"""

from __future__ import annotations

import argparse
import json

import torch
from snac import SNAC
from step_bench import graph_of  # benchmarks/ is the script directory
from triton.testing import do_bench

from orpheus_tts.tiny_model import SNAC_24KHZ_CONFIG


def codes_for(batch: int, frames: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randint(0, 4096, (batch, frames * n), device=device, generator=g) for n in (1, 2, 4)]


def timed(model: SNAC, codes: list[torch.Tensor], graph: bool) -> float:
    if not graph:
        return do_bench(lambda: model.decode(codes), return_mode="median")
    return do_bench(graph_of(lambda: model.decode(codes)).replay, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--windows", default="4,8,12")
    args = ap.parse_args()

    rows = []
    print(f"{'dtype':>8} {'window':>6} {'batch':>5} {'eager ms':>9} {'graph ms':>9} {'ms/frame(graph)':>15}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = SNAC(**SNAC_24KHZ_CONFIG).eval().to("cuda", dtype)
        with torch.inference_mode():
            for window in map(int, args.windows.split(",")):
                for batch in map(int, args.batches.split(",")):
                    codes = codes_for(batch, window, "cuda")
                    eager = timed(model, codes, graph=False)
                    graph = timed(model, codes, graph=True)
                    rows.append({"dtype": str(dtype), "window": window, "batch": batch,
                                 "eager_ms": eager, "graph_ms": graph})  # fmt: skip
                    print(f"{str(dtype)[6:]:>8} {window:>6} {batch:>5} {eager:>9.2f} {graph:>9.2f} "
                          f"{graph / (batch * window):>15.4f}")  # fmt: skip
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
