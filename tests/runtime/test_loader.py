import pathlib
import shutil

import pytest

from orpheus_tts.build import manifest
from orpheus_tts.build.manifest import Environment, Manifest
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import GenerationRequest, SamplingParams
from orpheus_tts.engine.torch_engine import TorchEngine
from orpheus_tts.serve.loader import LoadError, load_engine
from orpheus_tts.speech.prompts import build_prompts


def _cfg(**kw) -> RuntimeConfig:
    return RuntimeConfig(**{"device": "cpu", "max_batch_size": 2, "max_input_len": 32, "max_output_len": 32, **kw})


def _engine_dir(root: pathlib.Path, tiny: pathlib.Path, backend: str, **kw) -> pathlib.Path:
    """An engine directory in build_engine.py's layout (contracts.md), with a manifest listing its files."""
    shutil.copytree(tiny, root / "model", ignore=shutil.ignore_patterns("snac"))
    shutil.copytree(tiny / "snac", root / "snac")
    if backend == "trtllm":
        (root / "engine").mkdir()
        (root / "engine" / "rank0.engine").write_bytes(b"not a real engine")
        (root / "model" / "model.safetensors").unlink()  # a TensorRT build keeps only config + tokenizer
    m = Manifest(backend=backend, model_repo="tiny-random", requested_revision=None, resolved_commit=None,
                 weight_quantization="none", kv_cache_dtype="auto", max_batch_size=2, max_input_len=32,
                 max_output_len=32, snac_model="tiny-random", **kw)  # fmt: skip
    m.files = manifest.list_files(root)
    manifest.write(m, root)
    return root


async def _speak(loaded, text: str) -> list[int]:
    prompt = build_prompts(text, "tara", loaded.tokenizer, loaded.spec, loaded.engine.cfg.max_input_len)[0]
    await loaded.engine.start()
    try:
        out = []
        async for ids in loaded.engine.submit(GenerationRequest("a", prompt, SamplingParams(max_tokens=14))):
            out += ids
        return out
    finally:
        await loaded.engine.close()


async def test_model_directory(tiny_model_dir):
    loaded = load_engine(_cfg(model=str(tiny_model_dir)))
    assert isinstance(loaded.engine, TorchEngine)
    assert loaded.snac_source == str(tiny_model_dir / "snac")
    assert loaded.spec.audio_offset == 128266 and loaded.tokenizer.token_to_id("<|eot_id|>") == 128009
    assert str(tiny_model_dir) in loaded.description
    assert len(await _speak(loaded, "Hello there.")) <= 14


async def test_torch_engine_dir(tiny_model_dir, tmp_path):
    root = _engine_dir(tmp_path / "engine", tiny_model_dir, "torch")
    loaded = load_engine(_cfg(engine_dir=str(root), backend="trtllm"))  # the manifest's backend wins
    assert isinstance(loaded.engine, TorchEngine) and loaded.engine.model_dir == root / "model"
    assert loaded.snac_source == str(root / "snac")
    assert "torch engine" in loaded.description and "tiny-random" in loaded.description
    assert len(await _speak(loaded, "Hi.")) <= 14


def test_trtllm_engine_dir(tiny_model_dir, tmp_path, monkeypatch):
    from orpheus_tts.engine.trtllm_engine import TrtllmEngine

    tools = {"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1"}
    root = _engine_dir(tmp_path / "engine", tiny_model_dir, "trtllm", tools=tools, gpu_agnostic=False,
                       gpu_name="NVIDIA H100 80GB HBM3", gpu_arch="sm_90")  # fmt: skip
    with pytest.raises(LoadError, match="tensorrt_llm is not installed"):  # the real probe of this machine
        load_engine(_cfg(engine_dir=str(root)))
    h100 = Environment("NVIDIA H100 80GB HBM3", "sm_90", tools)
    monkeypatch.setattr(manifest, "probe_environment", lambda backend: h100)
    loaded = load_engine(_cfg(engine_dir=str(root)))
    assert isinstance(loaded.engine, TrtllmEngine) and loaded.spec.voices[0] == "tara"


def test_errors(tiny_model_dir, tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load_engine(_cfg(model=str(tmp_path / "missing")))
    with pytest.raises(LoadError, match="TRTLLM_ENGINE_DIR"):
        load_engine(_cfg(model=str(tiny_model_dir), backend="trtllm"))
    with pytest.raises(LoadError, match="did not finish"):
        load_engine(_cfg(engine_dir=str(tmp_path)))
    root = _engine_dir(tmp_path / "engine", tiny_model_dir, "torch")
    (root / "model" / "tokenizer.json").unlink()
    with pytest.raises(LoadError, match=r"tokenizer\.json is missing"):  # the manifest catches it first
        load_engine(_cfg(engine_dir=str(root)))
    no_tok = tmp_path / "no-tok"
    shutil.copytree(tiny_model_dir, no_tok, ignore=shutil.ignore_patterns("snac", "tokenizer.json"))
    with pytest.raises(LoadError, match=r"no tokenizer\.json"):
        load_engine(_cfg(model=str(no_tok)))
    (no_tok / "config.json").unlink()
    with pytest.raises(LoadError, match="no config"):
        load_engine(_cfg(model=str(no_tok)))
    with pytest.raises(LoadError, match="not in the local cache"):
        load_engine(_cfg(model="orpheus-tts-tests/never-cached", hf_offline=True))


async def test_engine_dir_from_build_engine(tmp_path):
    """What `orpheus-tts build-engine --backend torch` writes (int8 weights) loads and generates."""
    from orpheus_tts.build import build_engine

    out = tmp_path / "eng"
    argv = ["--backend", "torch", "--model", "tiny-random", "--out", str(out), "--weight-quantization", "int8",
            "--kv-cache-dtype", "auto", "--max-batch-size", "2", "--max-input-len", "32", "--max-output-len", "32",
            "--status-file", str(tmp_path / "status.json")]  # fmt: skip
    assert build_engine.main(argv) == 0
    loaded = load_engine(_cfg(engine_dir=str(out)))
    assert "int8" in loaded.description and loaded.snac_source == str(out / "snac")
    assert len(await _speak(loaded, "Hello world.")) <= 14
    assert loaded.engine.runner.model.layers[0].wqkv.weight.dtype.is_floating_point is False  # int8 kept, not upcast
