"""Host work per engine step at B live streams, on the CPU (issue 17, lever "host work").

On the GPU a decode step at B=256 takes ~10 ms of device time; whatever the host does around it (the scheduler,
the runner's tensor building, the flush to asyncio, and on the event loop every stream's per-frame Python: the
synthesizer, the windows, the SNAC batcher) either lengthens the step or competes with the event loop for the
GIL. This measures that host work with the model taken out:

- the real TorchEngine (scheduler, ModelRunner with its CUDA-graph host path: DecodeGraphs/PrefillGraphs padding
  and static inputs, the one `.tolist()` per step, the flush) on the tiny model, whose CUDA-graph replays are
  replaced by a stub that sleeps `--step-ms` (the device time; a sleep releases the GIL as a GPU sync does) and
  returns valid audio ids for each slot's position;
- the real Synthesizer and SnacBatcher for B streams, SNAC's decode replaced by silence of the right length.

Reported per engine step, in microseconds, over a steady-state window in which all B streams are generating:
the engine thread's phases (wall time, the stub excluded) and its CPU time, and the event loop thread's CPU time
(all streams' per-frame work), also per audio frame. Optionally (`--profile`) the event loop's and the engine
thread's top functions. CPU numbers of a 2-core shared machine: compare before/after on the same machine.

    python benchmarks/host_bench.py --batches 64 256 400 --out benchmarks/results/<date>-cpu-host-bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pathlib
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from orpheus_tts.audio import SAMPLES_PER_FRAME
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import SamplingParams
from orpheus_tts.engine.model_runner import ModelRunner
from orpheus_tts.engine.scheduler import Request, Scheduler
from orpheus_tts.engine.step_graphs import DecodeGraphs, PrefillGraphs
from orpheus_tts.engine.torch_engine import TorchEngine
from orpheus_tts.model.model_spec import ModelSpec, load_model_spec
from orpheus_tts.model.tiny_model import make_tiny_model
from orpheus_tts.serve.loader import load_tokenizer
from orpheus_tts.serve.metrics import Metrics
from orpheus_tts.speech.snac_batcher import SnacBatcher
from orpheus_tts.speech.synthesizer import Synthesizer
from orpheus_tts.speech.windows import Window


class Timers:
    """Accumulated nanoseconds per part; `wrap` times a callable into a part."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns[name] += time.perf_counter_ns() - t
                self.calls[name] += 1

        return timed

    def reset(self) -> None:
        self.ns.clear()
        self.calls.clear()


class StubReplays:
    """Stands in for a GraphSet: "replaying" sleeps the device time and returns, for each slot in the graph's
    static slot input, a valid audio id for the slot's next position (padding rows: any id)."""

    def __init__(self, scheduler: Scheduler, spec: ModelSpec, static_slots: Callable[[Any], torch.Tensor],
                 step_s: float, timers: Timers) -> None:  # fmt: skip
        self.scheduler, self.static_slots, self.step_s, self.timers = scheduler, static_slots, step_s, timers
        self.offset, self.block, self.frame = spec.audio_offset, spec.codebook_size, spec.codes_per_frame

    def __contains__(self, key: object) -> bool:
        return True

    def replay(self, key: Any) -> torch.Tensor:
        t, cpu = time.perf_counter_ns(), time.thread_time_ns()
        if self.step_s:
            time.sleep(self.step_s)
        active = self.scheduler.active
        ids = []
        for slot in self.static_slots(key).tolist():
            r = active.get(slot)
            pos = r.generated if r is not None else 0
            ids.append(self.offset + (pos % self.frame) * self.block + pos % self.block)
        out = torch.tensor(ids, dtype=torch.long)
        self.timers.ns["stub (device time, excluded)"] += time.perf_counter_ns() - t
        self.timers.ns["stub CPU (excluded)"] += time.thread_time_ns() - cpu
        return out


def stub_graphs(runner: ModelRunner, scheduler: Scheduler, timers: Timers, step_s: float,
                prefill_step_s: float) -> None:  # fmt: skip
    """The runner's CUDA-graph host path (padding, static inputs) with stub replays."""
    runner.graphs = DecodeGraphs(runner.model, runner.sampler, runner.state, runner.capacity, runner.scratch_slot,
                                 capture=False)  # fmt: skip
    most = min(runner.capacity, 32)  # as ModelRunner does on CUDA
    runner.prefill_graphs = PrefillGraphs(runner.model, runner.sampler, runner.state, most, runner.cfg.max_input_len,
                                          runner.scratch_slot, capture=False)  # fmt: skip
    decode_graphs, prefill_graphs = runner.graphs, runner.prefill_graphs
    spec = runner.spec
    decode_graphs.graphs = StubReplays(scheduler, spec, lambda b: decode_graphs.slots[b], step_s, timers)  # type: ignore[assignment]
    prefill_graphs.graphs = StubReplays(scheduler, spec, lambda shape: prefill_graphs.inputs[shape][1],  # type: ignore[assignment]
                                        prefill_step_s, timers)  # fmt: skip


def instrument(engine: TorchEngine, timers: Timers, step_s: float, prefill_step_s: float,
               profiler: cProfile.Profile | None = None) -> None:  # fmt: skip
    """Stub replays, and timers around the engine thread's phases."""
    runner = engine.runner
    stub_graphs(runner, engine.scheduler, timers, step_s, prefill_step_s)
    sched = engine.scheduler
    sched.schedule = timers.wrap("schedule", sched.schedule)  # type: ignore[method-assign]
    runner.run = timers.wrap("run (host)", runner.run)  # type: ignore[method-assign]
    sched.update = timers.wrap("update", sched.update)  # type: ignore[method-assign]
    engine._flush = timers.wrap("flush", engine._flush)  # type: ignore[method-assign]
    step = engine._step

    def timed_step() -> None:
        cpu = time.thread_time_ns()
        if profiler is not None and timers.calls["steps"] > 0:  # profiling: from the window's first step on
            profiler.enable()
        step()
        if profiler is not None:
            profiler.disable()
        timers.ns["engine thread CPU"] += time.thread_time_ns() - cpu
        timers.calls["steps"] += 1

    engine._step = timers.wrap("step (wall)", timed_step)  # type: ignore[method-assign]


def isolated(model_dir: pathlib.Path, batch: int, steps: int) -> dict[str, float]:
    """The engine thread's host work alone (the event loop idle in its own thread): median microseconds per
    decode step, by part, B requests running, their frames due at staggered steps. The flush includes waking
    the loop (a GIL hand-over)."""
    spec = load_model_spec(model_dir)
    cfg = RuntimeConfig(device="cpu", max_batch_size=batch, max_input_len=48, max_output_len=10 * steps)
    runner = ModelRunner(model_dir, cfg, spec, torch.device("cpu"), torch.float32)
    scheduler: Scheduler[Request] = Scheduler(batch, frozenset(spec.stop_ids), spec.codes_per_frame)
    timers = Timers()
    stub_graphs(runner, scheduler, timers, 0.0, 0.0)
    for i in range(batch):
        scheduler.add(Request(f"r{i}", [spec.start_of_human, spec.bos], SamplingParams(max_tokens=10 * steps), 0))
    with torch.inference_mode():
        out = runner.run(scheduler.schedule())  # admits and prefills everyone
        scheduler.update(out.requests, out.ids)
        for i, r in enumerate(scheduler.active.values()):
            r.tokens += [0] * (i % spec.codes_per_frame)  # frames due at different steps, as in a live server
        loop = asyncio.new_event_loop()  # idle, in a thread of its own: the flush wakes it once a step
        loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
        loop_thread.start()
        timers.reset()
        per_step: dict[str, list[int]] = defaultdict(list)
        for _ in range(steps):
            t0 = time.perf_counter_ns()
            batch_ = scheduler.schedule()
            t1 = time.perf_counter_ns()
            out = runner.run(batch_)
            t2 = time.perf_counter_ns()
            scheduler.update(out.requests, out.ids)
            t3 = time.perf_counter_ns()
            by_loop: dict[Any, list[Any]] = {}  # what TorchEngine._flush does, the post included
            for r, item in scheduler.take_output():
                by_loop.setdefault(loop, []).append((r, item))
            for items in by_loop.values():
                loop.call_soon_threadsafe(len, items)
            t4 = time.perf_counter_ns()
            stub, timers.ns["stub (device time, excluded)"] = timers.ns["stub (device time, excluded)"], 0
            for name, dt in (("schedule", t1 - t0), ("run (host)", t2 - t1 - stub), ("update", t3 - t2),
                             ("flush", t4 - t3)):  # fmt: skip
                per_step[name].append(dt)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()
    # Medians: this machine's other load preempts some steps, which a mean would count.
    result = {name: round(statistics.median(v) / 1000, 1) for name, v in per_step.items()}
    result["total"] = round(sum(result.values()), 1)
    return result


def silence(windows: list[Window]) -> list[bytes]:
    return [bytes((w.keep_to - w.keep_from) * SAMPLES_PER_FRAME * 2) for w in windows]


async def measure(model_dir: pathlib.Path, batch: int, seconds: float, step_ms: float, profile: bool) -> dict:
    spec = load_model_spec(model_dir)
    tokens = 2000
    cfg = RuntimeConfig(device="cpu", max_batch_size=batch, max_input_len=48, max_output_len=tokens,
                        cuda_graphs=False, snac_device="cpu")  # fmt: skip
    engine = TorchEngine(model_dir, cfg, spec)
    await engine.start()
    timers = Timers()
    engine_profiler = cProfile.Profile() if profile else None
    instrument(engine, timers, step_ms / 1000, 2 * step_ms / 1000, engine_profiler)
    batcher: SnacBatcher[Window, bytes] = SnacBatcher(silence, lambda w: w.n_frames, cfg.snac_max_batch,
                                                      cfg.snac_batch_timeout_ms)  # fmt: skip
    batcher.start()
    synth = Synthesizer(engine, spec, load_tokenizer(model_dir), batcher, cfg, Metrics())
    prompts = synth.prompts("Hello there, this is a long sentence to speak.", "tara")[:1]
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens)
    audio_bytes = [0]

    async def listener(delay: float) -> None:
        await asyncio.sleep(delay)  # staggered arrivals: streams at different frame positions
        async for pcm in synth.stream(prompts, params):
            audio_bytes[0] += len(pcm)

    rng = random.Random(0)
    tasks = [asyncio.create_task(listener(rng.uniform(0, 0.5))) for _ in range(batch)]
    while engine.occupancy().active < batch:  # noqa: ASYNC110 -- polled: the engine thread sets it
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    timers.reset()
    frames0, loop_cpu0, wall0 = audio_bytes[0], time.thread_time_ns(), time.perf_counter()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    loop_cpu, wall = time.thread_time_ns() - loop_cpu0, time.perf_counter() - wall0
    frames = (audio_bytes[0] - frames0) // (SAMPLES_PER_FRAME * 2)
    steps = timers.calls["steps"]
    assert engine.occupancy().active == batch, "a stream finished inside the window: raise tokens"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.close()
    await engine.close()

    ns = dict(timers.ns)
    stub, stub_cpu = ns.pop("stub (device time, excluded)", 0), ns.pop("stub CPU (excluded)", 0)
    ns["engine thread CPU"] -= stub_cpu
    per_step = {name: round(v / steps / 1000, 1) for name, v in ns.items()}
    per_step["run (host)"] = round((ns["run (host)"] - stub) / steps / 1000, 1)
    per_step["step (wall)"] = round((ns["step (wall)"] - stub) / steps / 1000, 1)
    result = {
        "batch": batch,
        "steps": steps,
        "steps_per_s": round(steps / wall, 1),
        "audio_frames": frames,
        "engine_us_per_step": per_step,
        "loop_cpu_us_per_step": round(loop_cpu / steps / 1000, 1),
        "loop_cpu_us_per_frame": round(loop_cpu / max(frames, 1) / 1000, 1),
        "loop_cpu_share": round(loop_cpu / 1e9 / wall, 3),
    }
    if profiler is not None and engine_profiler is not None:
        out = io.StringIO()
        out.write("== event loop thread ==\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        out.write("== engine thread ==\n")
        pstats.Stats(engine_profiler, stream=out).sort_stats("tottime").print_stats(25)
        result["loop_profile"] = out.getvalue()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 400])
    parser.add_argument("--seconds", type=float, default=5.0, help="steady-state window per batch size")
    parser.add_argument("--step-ms", type=float, default=10.0, help="device time of a decode step (stub sleep)")
    parser.add_argument("--isolated-steps", type=int, default=1400, help="engine-alone steps (0: skip)")
    parser.add_argument("--profile", action="store_true", help="print the event loop's top functions")
    parser.add_argument("--switch-interval-ms", type=float, help="sys.setswitchinterval (default: Python's 5 ms)")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON")
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(pathlib.Path(tmp) / "model", seed=0, with_snac=False)
        for batch in args.batches:
            engine_alone = isolated(model_dir, batch, args.isolated_steps) if args.isolated_steps else None
            result = asyncio.run(measure(model_dir, batch, args.seconds, args.step_ms, args.profile))
            if engine_alone is not None:
                result["engine_alone_us_per_step"] = engine_alone
            profile = result.pop("loop_profile", None)
            print(json.dumps(result), flush=True)
            if profile:
                print(profile)
            results.append(result)
    if args.out:
        meta = {"bench": "host_bench", "device": "cpu", "step_ms": args.step_ms, "seconds": args.seconds,
                "switch_interval_s": sys.getswitchinterval(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
