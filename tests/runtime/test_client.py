import asyncio
import socket

import pytest
from test_server import FRAME_BYTES, running_server, server_cfg, ws_url

from orpheus_tts.speech.wav import read_wav_info, wav_header, write_wav
from orpheus_tts.tools.client import TtsError, say_main, synthesize, warmup_main


def test_wav_round_trip(tmp_path):
    pcm = bytes(range(256)) * 10
    path = write_wav(tmp_path / "a.wav", pcm)
    assert read_wav_info(path) == (24000, 1, 16, len(pcm) // 2)
    assert path.read_bytes()[44:] == pcm
    assert len(wav_header()) == 44
    with pytest.raises(ValueError):
        write_wav(tmp_path / "b.wav", b"\x00")


async def test_say_writes_a_wav_through_the_websocket(fast_model_dir, tmp_path):
    async with running_server(server_cfg(fast_model_dir)) as server:
        out = tmp_path / "out.wav"
        args = ["Hello there.", "-o", str(out), "--url", ws_url(server), "--max-tokens", "21", "--min-tokens", "21"]
        assert await asyncio.to_thread(say_main, args) == 0
        assert read_wav_info(out) == (24000, 1, 16, 3 * FRAME_BYTES // 2)
        assert await asyncio.to_thread(say_main, ["Hi.", "-o", str(out), "--url", ws_url(server), "--voice", "x"]) == 1
        warm = ["--url", ws_url(server), "--max-tokens", "7"]
        assert await asyncio.to_thread(warmup_main, warm) == 0


async def test_errors_surface_as_tts_error(fast_model_dir):
    async with running_server(server_cfg(fast_model_dir)) as server:
        with pytest.raises(TtsError) as e:
            await synthesize(ws_url(server), {"text": " ", "voice": "tara"})
        assert e.value.code == "empty_text"
        with pytest.raises(TtsError) as e:
            await synthesize(ws_url(server), {"text": "Hi.", "voice": "nobody"})
        assert e.value.code == "close_1008"


def test_say_reports_an_unreachable_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        assert say_main(["Hi.", "-o", str(tmp_path / "x.wav"), "--url", f"ws://127.0.0.1:{port}/ws/tts"]) == 1
    assert "orpheus-tts say:" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
