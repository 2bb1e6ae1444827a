import asyncio
import json

import pytest
from test_server import running_server, server_cfg, ws_url

from orpheus_tts.tools.bench import main, playback, run_bench

SECOND = 48000  # bytes of one second of audio


def test_playback_counts_gaps_the_listener_hears():
    assert playback([]) == (0, 0.0)
    assert playback([(0.0, SECOND), (0.5, SECOND), (1.9, SECOND)]) == (0, 0.0)  # always ahead
    underruns, stall = playback([(0.0, SECOND), (1.5, SECOND), (2.4, SECOND)])
    assert underruns == 1 and stall == pytest.approx(0.5)  # late by 0.5 s, then ahead again
    underruns, stall = playback([(10.0, SECOND // 2), (10.7, SECOND // 2), (11.4, SECOND)])
    assert underruns == 2 and stall == pytest.approx(0.4)


def test_a_jitter_buffer_hides_gaps_shorter_than_itself():
    late = [(0.0, SECOND // 10), (0.15, SECOND // 10), (0.25, SECOND)]  # 50 ms late at 0.15, then on time
    assert playback(late) == (1, pytest.approx(0.05))
    assert playback(late, 0.1) == (0, 0.0)
    assert playback([(0.0, SECOND // 10), (0.35, SECOND)], 0.1)[0] == 1  # 150 ms late: the buffer is not enough


async def test_run_bench_against_a_server(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir, max_batch_size=4)) as server:
        message = {"text": "Hello.", "voice": "tara", "max_tokens": 21, "min_tokens": 21}
        result = await run_bench(ws_url(server), 6, 3, message)
    summary = result.summary()
    assert summary["ok"] == 6 and summary["errors"] == 0
    for s in result.streams:
        assert s.ok and s.audio_s == pytest.approx(3 * 2048 / 24000)
        assert 0 < s.first_audio_s <= s.total_s and s.rtf == pytest.approx(s.total_s / s.audio_s)
    assert summary["first_audio_p50_s"] <= summary["first_audio_max_s"]
    assert "first audio p50" in result.table()
    json.dumps(result.to_json())


async def test_bench_cli_json_and_failures(fast_model_dir, tmp_path):
    async with running_server(server_cfg(fast_model_dir, max_streams=1)) as server:
        path = tmp_path / "bench.json"
        args = ["--n", "3", "--concurrency", "3", "--url", ws_url(server), "--text", "Hi.", "--max-tokens", "14",
                "--min-tokens", "14", "--json", str(path)]  # fmt: skip
        # One stream place, three at once: the refused ones are recorded as errors (close 1013), not raised.
        assert await asyncio.to_thread(main, args) == 1
    data = json.loads(path.read_text())
    assert data["summary"]["n"] == 3 and data["summary"]["ok"] >= 1
    assert any("close_1013" in (s["error"] or "") for s in data["streams"])
