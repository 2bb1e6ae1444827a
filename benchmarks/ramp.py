"""The real server under a ramp of concurrent WebSocket streams, on an Orpheus-shaped random model.

Writes a 3.3B-parameter random-weight model in the Orpheus layout (`make-tiny-model --shape orpheus-3b`)
plus random SNAC, starts `orpheus-tts serve` on it as a separate process, and for each N opens N
streams whose arrivals are spread over `--arrival-s` seconds (users joining, not one synchronized burst).
Each stream asks for exactly `--tokens` audio tokens (min_tokens = max_tokens: random weights never stop
on their own). Per N: first-audio p50/p95/p99, each stream's real-time factor, underruns, tokens/s,
SNAC batch sizes from the server's /metrics. The verdict (the rule of issue #17): the largest N such that
every run at N and at every smaller level had every stream faster than real time (RTF < 1), first-audio
p95 <= 250 ms, and no stream with an underrun when its player starts 100 ms after the first byte (levels may
repeat, e.g. `--levels 128,144,160,144,160`: a level counts only if all its runs pass). The strict count
(playback from the first byte) is reported too; `passes_strict_rule` keeps the H100-era rule of issue #6.

    python benchmarks/ramp.py --levels 1,64,128,192,256,320,384 --json $OUT/ramp.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp

from orpheus_tts.tools.bench import run_stream

TEXT = "Hello there, this is one of many listeners streaming speech from the same GPU."


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def scrape(port: int) -> dict[str, float]:
    """Counters and histogram sums of the server's /metrics that the ramp reports deltas of."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(orpheus_[a-z_]+(?:_sum|_count|_total))(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(2))
    return values


async def level(url: str, n: int, tokens: int, arrival_s: float) -> dict:
    message = {"text": TEXT, "voice": "tara", "min_tokens": tokens, "max_tokens": tokens}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int):
            await asyncio.sleep(arrival_s * i / n)
            return await run_stream(session, url, i, message, None)

        start = time.monotonic()
        streams = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - start
    ok = [s for s in streams if s.ok]
    first = [s.first_audio_s for s in ok if s.first_audio_s is not None]
    rtf = [s.rtf for s in ok if s.rtf is not None]
    # Each stream's own generation rate after its first audio: what the engine gave it in steady state.
    rates = [tokens / (s.total_s - s.first_audio_s) for s in ok if s.first_audio_s and s.total_s > s.first_audio_s]
    return {
        "n": n, "ok": len(ok), "errors": sorted({s.error for s in streams if not s.ok}),
        "wall_s": wall,
        "first_audio_p50_s": quantile(first, 0.5), "first_audio_p95_s": quantile(first, 0.95),
        "first_audio_p99_s": quantile(first, 0.99),
        "rtf_p50": quantile(rtf, 0.5), "rtf_max": max(rtf, default=None),
        "streams_slower_than_realtime": sum(1 for r in rtf if r >= 1.0),
        "streams_with_underruns": sum(1 for s in ok if s.underruns), "stall_s_total": sum(s.stall_s for s in ok),
        "streams_with_underruns_100ms": sum(1 for s in ok if s.underruns_buffered),
        "stream_tokens_per_s_p50": quantile(rates, 0.5), "stream_tokens_per_s_min": min(rates, default=None),
        "audio_s": sum(s.audio_s for s in ok),
    }  # fmt: skip


def passes_issue6_rule(row: dict) -> bool:
    """The H100-era rule of issue #6, for one run of one level: all ok, RTF < 1, first-audio p95 <= 250 ms."""
    return (row["ok"] == row["n"] and row["streams_slower_than_realtime"] == 0
            and (row["first_audio_p95_s"] or 1e9) <= 0.25)  # fmt: skip


def passes(row: dict) -> bool:
    """The rule of issue #17: issue #6's rule, and no stream hears a gap behind a 100 ms jitter buffer."""
    return passes_issue6_rule(row) and row.get("streams_with_underruns_100ms", 1) == 0


def rule_verdict(rows: list[dict], rule=passes) -> int:
    """The largest N below which (inclusive) every run of every level passed `rule`."""
    verdict = 0
    for n in sorted({r["n"] for r in rows}):
        if not all(rule(r) for r in rows if r["n"] == n):
            break
        verdict = n
    return verdict


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float, poll_s: float = 1.0) -> None:
    """Until /readyz answers 200; RuntimeError if the server exits first, TimeoutError after `timeout_s`
    (exceptions, not SystemExit, so that h200_session.py records a failed server and goes on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"server not ready in {timeout_s:.0f} s")


def write_model(model_dir: str, shape: str = "orpheus-3b") -> float:
    """The random model, written once per directory (~32 s for the 3.3B shape); seconds spent."""
    t0 = time.monotonic()
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        shape_args = ["--shape", shape] if shape != "tiny" else []
        subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "make-tiny-model", model_dir, *shape_args],
                       check=True)  # fmt: skip
    return time.monotonic() - t0


def start_server(model_dir: str, port: int, capacity: int, extra_env: dict[str, str],
                 log_path: str) -> subprocess.Popen:  # fmt: skip
    """`orpheus-tts serve` on the model as its own process (torch backend, `capacity` slots)."""
    env = {**os.environ, "TRTLLM_MAX_BATCH_SIZE": str(capacity), "ORPHEUS_MAX_STREAMS": str(capacity),
           "ORPHEUS_MODEL": model_dir, "PORT": str(port), "HOST": "127.0.0.1", **extra_env}  # fmt: skip
    log = open(log_path, "w")  # the server's stdout; closed with the process
    return subprocess.Popen([sys.executable, "-m", "orpheus_tts.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def warm_up(port: int) -> None:
    """One short stream: first-call costs out of the numbers."""
    asyncio.run(level(f"ws://127.0.0.1:{port}/ws/tts", 1, 70, 0.0))


def measure_level(port: int, n: int, tokens: int, arrival_s: float, timeout_s: float | None = None) -> dict:
    """One level through the server, with the deltas of its /metrics; raises TimeoutError past timeout_s."""
    url = f"ws://127.0.0.1:{port}/ws/tts"
    before = scrape(port)
    row = asyncio.run(asyncio.wait_for(level(url, n, tokens, arrival_s if n > 1 else 0.0), timeout_s))
    after = scrape(port)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("orpheus_snac_batch_size_count", 0.0)
    row["snac_calls"] = batches
    row["snac_mean_batch"] = delta.get("orpheus_snac_batch_size_sum", 0.0) / batches if batches else None
    row["tokens_per_s"] = delta.get("orpheus_generated_tokens_total", 0.0) / row["wall_s"]
    # The engine loop's own clock: wall time per step vs the GPU time of its decode graph; the
    # difference is host work (scheduling, fan-out, waiting for the GIL).
    steps = delta.get("orpheus_engine_steps_total", 0.0)
    row["engine_steps"] = steps
    if steps:
        row["step_ms"] = 1000 * delta.get("orpheus_engine_step_seconds_total", 0.0) / steps
        for part in ("prefill", "decode"):
            gpu_s = delta.get(f"orpheus_engine_{part}_gpu_seconds_total", 0.0)
            row[f"{part}_gpu_ms"] = 1000 * gpu_s / steps
    for name in ("first_token", "first_audio", "event_loop_lag"):
        count = delta.get(f"orpheus_{name}_seconds_count", 0.0)
        row[f"server_{name}_mean_s"] = delta.get(f"orpheus_{name}_seconds_sum", 0.0) / count if count else None
    return row


def print_table(results: list[dict]) -> None:
    print(f"\n{'N':>4} {'ok':>4} {'fa p50':>7} {'fa p95':>7} {'fa p99':>7} {'rtf p50':>7} {'rtf max':>7} "
          f"{'slow':>4} {'underrun':>8} {'u@100ms':>7} {'tok/s':>7} {'tok/s/str':>9} {'snac b':>6}")  # fmt: skip
    fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in results:
        print(f"{r['n']:>4} {r['ok']:>4} {fmt(r['first_audio_p50_s']):>7} {fmt(r['first_audio_p95_s']):>7} "
              f"{fmt(r['first_audio_p99_s']):>7} {fmt(r['rtf_p50']):>7} {fmt(r['rtf_max']):>7} "
              f"{r['streams_slower_than_realtime']:>4} {r['streams_with_underruns']:>8} "
              f"{r['streams_with_underruns_100ms']:>7} {r['tokens_per_s']:>7.0f} "
              f"{fmt(r['stream_tokens_per_s_p50'], '{:.1f}'):>9} {fmt(r['snac_mean_batch'], '{:.1f}'):>6}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,64,128,192,256,320,384")
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--arrival-s", type=float, default=2.0)
    ap.add_argument("--capacity", type=int, default=384)
    ap.add_argument("--model-dir", default="/tmp/orpheus-3b-random")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", default=None)
    ap.add_argument("--server-log", default="/tmp/server.log")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the server (variants: ORPHEUS_SNAC_CUDA_GRAPHS=0, ...)")  # fmt: skip
    args = ap.parse_args()
    levels = [int(n) for n in args.levels.split(",")]

    print(f"model written in {write_model(args.model_dir):.0f} s", flush=True)
    server = start_server(args.model_dir, args.port, args.capacity,
                          dict(kv.split("=", 1) for kv in args.server_env), args.server_log)  # fmt: skip
    results = []
    try:
        t0 = time.monotonic()
        try:
            wait_ready(args.port, server, timeout_s=600)
        except (RuntimeError, TimeoutError) as e:
            raise SystemExit(str(e)) from None
        print(f"server ready in {time.monotonic() - t0:.0f} s", flush=True)
        warm_up(args.port)
        for n in levels:
            row = measure_level(args.port, n, args.tokens, args.arrival_s)
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop_server(server)
    verdict = rule_verdict(results)
    verdict_issue6 = rule_verdict(results, passes_issue6_rule)
    print_table(results)
    print(
        f"\nlargest N with every run up to it passing (all streams faster than real time, first-audio p95 "
        f"<= 250 ms, no underrun behind a 100 ms jitter buffer): {verdict} (without the underrun condition: "
        f"{verdict_issue6})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"levels": results, "verdict_n": verdict, "verdict_n_issue6_rule": verdict_issue6,
                       "tokens": args.tokens, "arrival_s": args.arrival_s,
                       "capacity": args.capacity, "server_env": args.server_env}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
