"""One device call for issue #17: the baseline re-check, each lever through the real server, the naive peer,
inside a wall-clock budget, every result written to `--out` as it arrives (a timeout loses only the part
that was running).

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:runtime PYTHONUNBUFFERED=1
    timeout 590 python3 benchmarks/h200_session.py --out $OUT

In order, each part only if the time left covers its estimate (else recorded as skipped, with why):
1. the random 3.3B Orpheus-shaped model, written once (~32 s) and reused by every server;
2. the baseline: a server with the defaults, ramp levels 1, 64, 192 (issue #15's re-check against
   benchmarks/results/2026-12-01-h200-ramp-baseline.json), then 256, 320, 400;
3. benchmarks/lever_check.py: each model lever's agreement with the default on the GPU (and its bare decode
   step); a lever that fails it is not timed;
4. each lever (`--levers`, in order) as its own server with its environment, at `--lever-levels`
   (levers without a model part, the SNAC order and the emit policy, at 1,160,192,224 where the baseline
   has its gaps); a lever whose model part failed the check is not timed;
5. benchmarks/peer_hf.py, the naive HF peer, if `--peer-min-s` are left.

Files under --out: session.json (everything, rewritten after every level), ramp-<name>.json per server
(benchmarks/ramp.py's format), lever_check.json, peer.json, server-<name>.log (the last 256 KiB).
Capacity 416 slots (13 graph buckets of 32), so that 400 streams run without queueing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import ramp
from lever_check import LEVERS as MODEL_LEVERS

# Levers that are not model numerics (no GPU correctness check applies; their logic is tested in CI), and
# the combination aimed at issue #17's goal. A lever's model part (if any) must pass lever_check.py.
GAP_LEVERS = {"ORPHEUS_SNAC_ORDER": "deadline", "ORPHEUS_EMIT_POLICY": "paced"}
OTHER_LEVERS: dict[str, dict[str, str]] = {
    "snac-deadline": {"ORPHEUS_SNAC_ORDER": "deadline"},
    "emit-paced": {"ORPHEUS_EMIT_POLICY": "paced"},
    "snac-deadline+emit-paced": GAP_LEVERS,
    "kv-fp8+linear-fp8+snac-deadline+emit-paced": {**MODEL_LEVERS["kv-fp8+linear-fp8"], **GAP_LEVERS},
    "kv-int8+snac-deadline+emit-paced": {**MODEL_LEVERS["kv-int8"], **GAP_LEVERS},
    # The gap levers' old defaults (before they became the defaults), for an A/B in the same run.
    "snac-shape+emit-frames": {"ORPHEUS_SNAC_ORDER": "shape", "ORPHEUS_EMIT_POLICY": "frames"},
    # The host side: Python's GIL switch interval (the server's default is 1 ms; benchmarks/host_bench.py).
    "gil-switch-0.5ms": {"ORPHEUS_GIL_SWITCH_INTERVAL_MS": "0.5"},
}
LEVERS = {**MODEL_LEVERS, **OTHER_LEVERS}
# The gap levers alone change nothing about throughput: they are measured where the baseline's gaps are.
GAP_ONLY_LEVELS = "1,160,192,224"
DEFAULT_LEVERS = ("kv-fp8+linear-fp8,kv-fp8+linear-fp8+snac-deadline+emit-paced,kv-int8,snac-deadline+emit-paced,"
                  "linear-fp8,kv-fp8")  # fmt: skip


def model_part(env: dict[str, str]) -> str | None:
    """The lever_check.py lever whose environment is `env`'s model settings (None: no model lever)."""
    wanted = {k: v for k, v in env.items() if k in ("ORPHEUS_KV_CACHE_DTYPE", "ORPHEUS_LINEAR_DTYPE")}
    if not wanted:
        return None
    return next((name for name, e in MODEL_LEVERS.items() if e == wanted), None)


def lever_levels(name: str, default: str, gap_levels: str = GAP_ONLY_LEVELS) -> list[int]:
    model_free = model_part(LEVERS[name]) is None
    return parse_levels(gap_levels if model_free else default)


TOKENS_PER_SECOND_REALTIME = 82.03
STOP_MARGIN_S = 12.0  # stopping a server and writing its results


@dataclass
class Budget:
    """Seconds left of the session's wall-clock budget; `clock` is injectable for tests."""

    total_s: float
    clock: Callable[[], float] = time.monotonic
    start: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


def rtf_guess(n: int) -> float:
    """A pessimistic real-time factor at n streams (the 2026-12-01 baseline: 0.24 at 1, 0.85 at 192,
    1.11 at 256); used only to decide whether a level still fits."""
    return max(0.3, n / 220)


def level_estimate_s(n: int, tokens: int, arrival_s: float) -> float:
    """Wall time of one ramp level: arrivals, the slowest stream's audio at rtf_guess, and slack."""
    return (arrival_s if n > 1 else 0.0) + tokens / TOKENS_PER_SECOND_REALTIME * rtf_guess(n) + 2.0


def server_fits(budget: Budget, startup_s: float, levels: list[int], tokens: int, arrival_s: float) -> bool:
    """A server is worth starting if its startup and its first two levels fit (the rest are cut as needed)."""
    first = sum(level_estimate_s(n, tokens, arrival_s) for n in levels[:2])
    return budget.fits(startup_s + first + STOP_MARGIN_S)


def parse_levels(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = pathlib.Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget = Budget(args.budget_s)
        self.servers_started = 0
        self.result: dict = {"args": vars(args), "parts": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}  # fmt: skip

    def write(self) -> None:
        self.result["elapsed_s"] = self.budget.elapsed()
        tmp = self.out / "session.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=2))
        tmp.replace(self.out / "session.json")

    def record(self, name: str, part: dict) -> None:
        self.result["parts"][name] = part
        self.write()
        print(f"[{self.budget.elapsed():5.0f} s] {name}: {json.dumps(summary(part))}", flush=True)

    # -- parts ----------------------------------------------------------------------------------------

    def environment(self) -> None:
        # No CUDA context in this process: the servers and the check get the whole GPU.
        env: dict = {"python": sys.version.split()[0]}
        for key, cmd in (("torch", [sys.executable, "-c", "import torch; print(torch.__version__)"]),
                         ("device", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                     "--format=csv,noheader"]),
                         ("commit", ["git", "rev-parse", "HEAD"])):  # fmt: skip
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                env[key] = done.stdout.strip() or None
            except (OSError, subprocess.TimeoutExpired):
                env[key] = None
        self.record("environment", env)

    def model(self) -> None:
        t0 = time.monotonic()
        ramp.write_model(self.args.model_dir, self.args.shape)
        self.record("model", {"dir": self.args.model_dir, "shape": self.args.shape, "seconds": time.monotonic() - t0})

    def lever_check(self, names: list[str]) -> dict:
        """Runs lever_check.py on the model levers among `names`; its JSON (possibly partial) or {}."""
        model_levers = sorted({m for m in map(model_part, (LEVERS[n] for n in names)) if m is not None},
                              key=list(MODEL_LEVERS).index)  # fmt: skip
        path = self.out / "lever_check.json"
        part: dict = {"levers": model_levers}
        if not model_levers:
            part["skipped"] = "no model lever selected"
        elif not self.budget.fits(self.args.check_s + STOP_MARGIN_S):
            part["skipped"] = f"budget: {self.budget.left():.0f} s left, the check needs ~{self.args.check_s:.0f} s"
        else:
            cmd = [sys.executable, str(pathlib.Path(__file__).with_name("lever_check.py")),
                   "--model-dir", self.args.model_dir, "--levers", ",".join(model_levers), "--json", str(path),
                   "--device", self.args.device]  # fmt: skip
            if self.args.device == "cpu":
                cmd += ["--slots", "2", "--steps", "4", "--time-batch", "2"]
            timeout = min(self.args.check_timeout_s, self.budget.left() - STOP_MARGIN_S)
            part |= run_logged(cmd, self.out / "lever_check.log", timeout)
        check = json.loads(path.read_text()) if path.exists() else {}
        part["result"] = check
        self.record("lever_check", part)
        return check

    def server(self, name: str, env: dict[str, str], levels: list[int], extra: dict | None = None) -> None:
        """One server with `env`, the levels that fit; ramp-<name>.json in ramp.py's format."""
        a = self.args
        part: dict = {"server_env": env, "levels_planned": levels, **(extra or {})}
        if not server_fits(self.budget, a.startup_s, levels, a.tokens, a.arrival_s):
            part["skipped"] = f"budget: {self.budget.left():.0f} s left"
            self.record(name, part)
            return
        log_path = self.out / f"server-{name}.log"
        rows: list[dict] = []
        part["levels"] = rows
        port = a.port + self.servers_started  # a fresh port each: no wait on the last server's socket
        self.servers_started += 1
        server = ramp.start_server(a.model_dir, port, a.capacity, env, str(log_path))
        try:
            t0 = time.monotonic()
            ramp.wait_ready(port, server, min(a.startup_timeout_s, self.budget.left() - STOP_MARGIN_S), poll_s=0.5)
            part["startup_s"] = time.monotonic() - t0
            ramp.measure_level(port, 1, 70, 0.0, timeout_s=60)  # warm-up: first-call costs out of the numbers
            for n in levels:
                need = level_estimate_s(n, a.tokens, a.arrival_s)
                if not self.budget.fits(need + STOP_MARGIN_S):
                    part["cut"] = f"levels from {n} on: {self.budget.left():.0f} s left, N={n} needs ~{need:.0f} s"
                    break
                try:
                    row = ramp.measure_level(port, n, a.tokens, a.arrival_s, self.budget.left() - STOP_MARGIN_S)
                except TimeoutError:
                    rows.append({"n": n, "timed_out": True})
                    part["cut"] = f"N={n} ran past the budget"
                    break
                rows.append(row)
                self.record(name, part)
        except Exception as e:  # a server that fails is recorded; the session goes on
            part["error"] = f"{type(e).__name__}: {e}"
            part["traceback"] = traceback.format_exc()[-3000:]
        finally:
            ramp.stop_server(server)
            trim(log_path, 256 * 1024)
        full = [r for r in rows if not r.get("timed_out")]
        part["verdict_n"] = ramp.rule_verdict(full) if full else None
        part["verdict_n_issue6_rule"] = ramp.rule_verdict(full, ramp.passes_issue6_rule) if full else None
        (self.out / f"ramp-{name}.json").write_text(json.dumps(
            {"levels": full, "verdict_n": part["verdict_n"], "verdict_n_issue6_rule": part["verdict_n_issue6_rule"],
             "tokens": a.tokens, "arrival_s": a.arrival_s, "capacity": a.capacity,
             "server_env": [f"{k}={v}" for k, v in env.items()]}, indent=2))  # fmt: skip
        self.record(name, part)
        if full:
            ramp.print_table(full)

    def levers(self, names: list[str], check: dict) -> None:
        checked = check.get("levers", {})
        for name in names:
            extra: dict = {}
            model = model_part(LEVERS[name])
            if model is not None:
                entry = checked.get(model)
                if entry is None:
                    extra["unchecked"] = "lever_check.py has no result for it (skipped, crashed or timed out)"
                elif not entry.get("ok"):
                    check_entry = {k: v for k, v in entry.items() if k != "traceback"}
                    self.record(f"lever-{name}", {"server_env": LEVERS[name], "skipped": "failed the GPU check",
                                                  "check": check_entry})  # fmt: skip
                    continue
            self.server(
                f"lever-{name}", LEVERS[name], lever_levels(name, self.args.lever_levels, self.args.gap_levels), extra
            )

    def peer(self) -> None:
        part: dict = {}
        if not self.args.peer:
            part["skipped"] = "--no-peer"
        elif not self.budget.fits(self.args.peer_min_s):
            part["skipped"] = (f"budget: {self.budget.left():.0f} s left (needs ~{self.args.peer_min_s:.0f} s); "
                               "measured on 2026-12-01: benchmarks/results/2026-12-01-h200-peer-hf.json")  # fmt: skip
        else:
            path = self.out / "peer.json"
            cmd = [sys.executable, str(pathlib.Path(__file__).with_name("peer_hf.py")),
                   "--model-dir", self.args.model_dir, "--json", str(path)]  # fmt: skip
            part |= run_logged(cmd, self.out / "peer.log", self.budget.left() - 5)
            part["result"] = json.loads(path.read_text()) if path.exists() else None
        self.record("peer", part)


def run_logged(cmd: list[str], log_path: pathlib.Path, timeout_s: float) -> dict:
    """A child process with its output in log_path, killed past timeout_s."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        rc: int | str
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
    trim(log_path, 256 * 1024)
    return {"rc": rc, "seconds": time.monotonic() - t0}


def trim(path: pathlib.Path, keep: int) -> None:
    """Keeps the last `keep` bytes of a log (what comes back from the device is limited)."""
    if path.exists() and path.stat().st_size > keep:
        with open(path, "rb") as f:
            f.seek(-keep, os.SEEK_END)
            tail = f.read()
        path.write_bytes(b"[... trimmed ...]\n" + tail)


def summary(part: dict) -> dict:
    """A one-line view of a part for the console."""
    keys = ("skipped", "error", "cut", "verdict_n", "verdict_n_issue6_rule", "startup_s", "rc", "seconds", "device")
    out = {k: part[k] for k in keys if k in part}
    if part.get("levels") and isinstance(part["levels"], list):
        last = part["levels"][-1]
        out["last"] = {k: last.get(k) for k in ("n", "rtf_max", "first_audio_p95_s", "streams_with_underruns_100ms",
                                                "tokens_per_s", "decode_gpu_ms")}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/h200-session"))
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole session")
    ap.add_argument("--model-dir", default="/tmp/orpheus-3b-random")
    ap.add_argument("--shape", default="orpheus-3b", help="make-tiny-model shape; 'tiny' for a CPU dry run")
    ap.add_argument("--device", default="cuda", help="lever_check.py's device; 'cpu' for a dry run")
    ap.add_argument("--baseline-levels", default="1,64,192,256,320,400")
    ap.add_argument("--lever-levels", default="1,256,320,400", help="levels of levers with a model part")
    ap.add_argument("--gap-levels", default=GAP_ONLY_LEVELS, help="levels of levers without a model part")
    ap.add_argument("--levers", default=DEFAULT_LEVERS, help=f"in order, from: {', '.join(LEVERS)}")
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--arrival-s", type=float, default=2.0)
    ap.add_argument("--capacity", type=int, default=416)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--startup-s", type=float, default=70.0, help="expected server startup (load, warm-up, graphs)")
    ap.add_argument("--startup-timeout-s", type=float, default=240.0)
    ap.add_argument("--check-s", type=float, default=120.0, help="expected lever_check.py time")
    ap.add_argument("--check-timeout-s", type=float, default=180.0, help="lever_check.py is stopped after this")
    ap.add_argument("--peer", default=True, action=argparse.BooleanOptionalAction)
    ap.add_argument("--peer-min-s", type=float, default=110.0)
    args = ap.parse_args(argv)
    names = [n for n in args.levers.split(",") if n]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        ap.error(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")

    s = Session(args)
    s.environment()
    s.model()
    s.server("baseline", {}, parse_levels(args.baseline_levels))
    check = s.lever_check(names)
    s.levers(names, check)
    s.peer()
    print(f"session done in {s.budget.elapsed():.0f} s; results in {s.out}", flush=True)


if __name__ == "__main__":
    main()
