"""benchmarks/h200_session.py, the one-call GPU session of issue #17, on the CPU: its time-budget logic
directly, and one dry run through real servers on the tiny random model (noise, not speech), checking that
every part lands in --out as JSON and that a lever whose check fails is not timed."""

import argparse
import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import h200_session as hs  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_counts_down_from_its_start():
    clock = FakeClock()
    budget = hs.Budget(540, clock)
    clock.now += 500
    assert budget.elapsed() == 500 and budget.left() == 40
    assert budget.fits(40) and not budget.fits(41)


def test_level_estimates_grow_with_load_and_cover_the_baseline():
    # 2026-12-01 baseline: N=256 took 2 s of arrivals + 7.3 s of audio at RTF 1.11 (~10 s).
    assert hs.level_estimate_s(1, 600, 2.0) < hs.level_estimate_s(256, 600, 2.0) < hs.level_estimate_s(400, 600, 2.0)
    assert hs.level_estimate_s(256, 600, 2.0) >= 2 + 600 / 82.03 * 1.11
    assert hs.level_estimate_s(1, 600, 2.0) < 5  # no arrival spread for one stream


def test_a_server_starts_only_if_startup_and_two_levels_fit():
    clock = FakeClock()
    budget = hs.Budget(540, clock)
    need = 70 + hs.level_estimate_s(1, 600, 2) + hs.level_estimate_s(256, 600, 2) + hs.STOP_MARGIN_S
    clock.now += 540 - need - 0.5
    assert hs.server_fits(budget, 70, [1, 256, 320, 400], 600, 2)
    clock.now += 1
    assert not hs.server_fits(budget, 70, [1, 256, 320, 400], 600, 2)


def test_unknown_lever_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        hs.main(["--out", str(tmp_path), "--levers", "kv-int4"])


def test_trim_keeps_the_tail(tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes(b"a" * 1000 + b"END")
    hs.trim(log, 10)
    assert log.read_bytes().endswith(b"a" * 7 + b"END") and len(log.read_bytes()) < 100


def test_dry_run_on_the_cpu(tiny_model_dir, tmp_path):
    """Baseline and one lever through real servers, lever_check on the CPU, the peer switched off:
    session.json and each part's file exist and say what happened."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "h200_session.py"), "--out", str(out), "--budget-s", "400",
           "--model-dir", str(tiny_model_dir), "--shape", "tiny", "--device", "cpu", "--baseline-levels", "1,2",
           "--lever-levels", "1", "--levers", "kv-int8", "--tokens", "14", "--capacity", "4", "--no-peer",
           "--startup-s", "20", "--check-s", "40", "--port", "18765"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=BENCH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    session = json.loads((out / "session.json").read_text())
    parts = session["parts"]
    assert [r["n"] for r in parts["baseline"]["levels"]] == [1, 2]
    assert all(r["ok"] == r["n"] for r in parts["baseline"]["levels"])
    assert parts["lever_check"]["rc"] == 0 and parts["lever_check"]["result"]["levers"]["kv-int8"]["ok"]
    assert parts["lever-kv-int8"]["server_env"] == {"ORPHEUS_KV_CACHE_DTYPE": "int8"}
    assert [r["n"] for r in parts["lever-kv-int8"]["levels"]] == [1]
    assert parts["peer"]["skipped"] == "--no-peer"
    ramp = json.loads((out / "ramp-baseline.json").read_text())
    assert "verdict_n" in ramp and len(ramp["levels"]) == 2
    assert (out / "server-baseline.log").stat().st_size > 0


def test_a_lever_that_failed_its_check_is_not_timed(tmp_path):
    args = argparse.Namespace(
        out=str(tmp_path), budget_s=100.0, lever_levels="1", model_dir="/nonexistent", tokens=14, arrival_s=2.0,
        capacity=4, port=18766, startup_s=20.0, startup_timeout_s=30.0)  # fmt: skip
    session = hs.Session(args)
    session.levers(["kv-fp8"], {"levers": {"kv-fp8": {"ok": False, "error": "RuntimeError: no fp8 here"}}})
    part = json.loads((tmp_path / "session.json").read_text())["parts"]["lever-kv-fp8"]
    assert part["skipped"] == "failed the GPU check" and part["check"]["error"].startswith("RuntimeError")


def test_a_server_that_cannot_start_is_recorded_and_the_session_goes_on(tmp_path):
    args = argparse.Namespace(
        out=str(tmp_path), budget_s=200.0, lever_levels="1", model_dir=str(tmp_path / "no-model"), tokens=14,
        arrival_s=2.0, capacity=4, port=18767, startup_s=5.0, startup_timeout_s=60.0)  # fmt: skip
    session = hs.Session(args)
    session.server("broken", {}, [1])
    part = json.loads((tmp_path / "session.json").read_text())["parts"]["broken"]
    assert "exited" in part["error"] and part["verdict_n"] is None


def test_each_lever_maps_to_its_checked_model_part_and_its_levels():
    assert hs.model_part({}) is None
    assert hs.model_part(hs.LEVERS["snac-deadline+emit-paced"]) is None
    assert hs.model_part(hs.LEVERS["kv-fp8+linear-fp8+snac-deadline+emit-paced"]) == "kv-fp8+linear-fp8"
    assert hs.model_part({"ORPHEUS_KV_CACHE_DTYPE": "int8"}) == "kv-int8"
    # Gap levers alone are measured where the baseline has its gaps, model levers where it runs out.
    assert hs.lever_levels("emit-paced", "1,256") == hs.parse_levels(hs.GAP_ONLY_LEVELS)
    assert hs.lever_levels("kv-int8", "1,256") == [1, 256]
    assert all(n in hs.LEVERS for n in hs.DEFAULT_LEVERS.split(","))
