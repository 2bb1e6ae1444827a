"""`orpheus-tts serve` with a TensorRT-LLM engine directory, through the TensorRT-LLM test double: the real
server, loader, doctor check, manifest check and SNAC (the tiny model's, on CPU); only the library is the
double. Its "audio codes" are scripted, so the audio is noise.

Issue 14, item 8: the engine load runs off the event loop, so /healthz answers during it (the liveness probe
does not restart a loading pod) while /readyz says `loading` until the engine and SNAC are up.
"""

import asyncio
import json
import pathlib
import shutil
import threading
import time
import urllib.request

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from test_server import END, server_cfg, speak, ws_url
from trtllm_double.install import installed

from orpheus_tts.build import manifest as mf
from orpheus_tts.serve.app import create_app

A = 128266


def _trt_engine_dir(root: pathlib.Path, model: pathlib.Path) -> pathlib.Path:
    """An engine directory as build-engine lays out a trtllm build (model files but no weights, engine/)."""
    shutil.copytree(model, root / "model", ignore=shutil.ignore_patterns("snac", "*.safetensors"))
    shutil.copytree(model / "snac", root / "snac")
    (root / "engine").mkdir()
    (root / "engine" / "rank0.engine").write_bytes(b"engine")
    m = mf.Manifest(backend="trtllm", model_repo="tiny-random", requested_revision=None, resolved_commit=None,
                    weight_quantization="int4_awq", kv_cache_dtype="int8", max_batch_size=4, max_input_len=24,
                    max_output_len=512, tools={"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1.48"},
                    gpu_agnostic=False, gpu_name="NVIDIA H100", gpu_arch="sm_90", snac_model="tiny-random")  # fmt: skip
    m.files = mf.list_files(root)
    mf.write(m, root)
    return root


@pytest.fixture
def trtllm(monkeypatch):
    with installed(monkeypatch) as api:
        monkeypatch.setattr(mf, "probe_gpu", lambda: ("NVIDIA H100", "sm_90"))
        yield api


async def test_probes_during_a_slow_engine_load_then_audio(trtllm, fast_model_dir, tmp_path):
    root = _trt_engine_dir(tmp_path / "engine", fast_model_dir)
    trtllm.LLM.init_seconds = 3.0  # a real engine load takes tens of seconds
    frame = [A + block * 4096 + 5 for block in range(7)]
    trtllm.LLM.behaviour = staticmethod(lambda prompt, params: [frame, frame, [128258]])
    cfg = server_cfg(fast_model_dir, engine_dir=str(root), max_batch_size=4, max_input_len=24, max_output_len=512)
    server = TestServer(create_app(cfg, background_load=True), host="127.0.0.1")
    await server.start_server()
    try:
        # The kubelet's probes come from outside the server's event loop: so does this one, from a thread.
        latencies: list[float] = []
        stop = threading.Event()

        def probe_healthz() -> None:
            while not stop.is_set():
                t = time.monotonic()
                with urllib.request.urlopen(str(server.make_url("/healthz")), timeout=10) as r:
                    assert r.status == 200
                latencies.append(time.monotonic() - t)
                time.sleep(0.05)

        prober = threading.Thread(target=probe_healthz, daemon=True)
        prober.start()
        async with aiohttp.ClientSession() as s:
            statuses = []
            start = time.monotonic()
            while time.monotonic() - start < 60:
                async with s.get(server.make_url("/readyz")) as r:
                    statuses.append((await r.json())["status"])
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.to_thread(prober.join, 15)
            assert statuses[0] == "loading" and statuses[-1] == "ready", statuses
            assert len(latencies) >= 20  # probed all through the 3 s engine load...
            assert max(latencies) < 1.0, max(latencies)  # ...and /healthz never waited on it
            [llm] = trtllm.LLM.instances
            assert llm.kwargs["model"] == str(root / "engine")
            async with s.ws_connect(ws_url(server)) as ws:
                await ws.send_str(speak(tokens=21))
                audio = b""
                while (msg := await ws.receive(timeout=60)).data != END:
                    audio += msg.data
            assert len(audio) == 2 * 2048 * 2  # two frames of 2048 samples, s16le
            [result] = llm.results
            assert result.sampling_params.seed is not None and result.sampling_params.max_tokens == 21
            assert json.loads(json.dumps(result.prompt_token_ids))[0] == 128259  # start of human
    finally:
        await server.close()
    assert trtllm.LLM.instances[0].shut_down
