"""TrtllmEngine against the TensorRT-LLM test double (tests/runtime/trtllm_double).

What this proves: the mapping onto the documented 1.2.x API and the Engine contract on top of it.
What it cannot prove: that the real library behaves like the double (docs/engine-build.md lists what
is verified on a GPU only).
"""

import asyncio
import dataclasses
import sys
import threading
import time

import pytest
from trtllm_double.install import drop_modules, installed

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import EngineError, GenerationRequest, SamplingParams
from orpheus_tts.engine.trtllm_engine import TrtllmEngine, kv_cache_tokens, take
from orpheus_tts.model.model_spec import ModelSpec

EOS = 128258
END_OF_AI = 128262
END_OF_TEXT = 128009
A = 128266  # first audio id


def Spec(**kw) -> ModelSpec:
    return dataclasses.replace(ModelSpec(), **kw)


@pytest.fixture
def api(monkeypatch):
    with installed(monkeypatch) as api:
        api.LLM.behaviour = staticmethod(lambda prompt, params: [])
        yield api


@pytest.fixture
def engine_dir(tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    return tmp_path


def _cfg(**kw) -> RuntimeConfig:
    return RuntimeConfig(
        **{"max_batch_size": 4, "max_input_len": 48, "max_output_len": 1024, "kv_free_gpu_frac": 0.7, **kw}
    )


async def _started(engine_dir, **kw) -> TrtllmEngine:
    engine = TrtllmEngine(engine_dir, _cfg(**kw), Spec())
    await engine.start()
    return engine


async def _collect(engine, request) -> list[list[int]]:
    return [chunk async for chunk in engine.submit(request)]


def _req(rid="r1", prompt=(1, 2, 3), **params) -> GenerationRequest:
    return GenerationRequest(rid, list(prompt), SamplingParams(**params))


async def test_start_loads_the_engine_with_int8_kv_safe_settings(api, engine_dir):
    await _started(engine_dir)
    [llm] = api.LLM.instances
    assert llm.kwargs["model"] == str(engine_dir / "engine")
    assert llm.kwargs["tokenizer"] == str(engine_dir / "model")
    kv = llm.kwargs["kv_cache_config"]
    assert kv.free_gpu_memory_fraction == 0.7 and kv.enable_block_reuse is False and kv.dtype == "auto"
    # the pool is capped at what 4 slots of 48 + 1024 tokens can use: 9 blocks of 128 (+1 spare) each
    assert kv.max_tokens == kv_cache_tokens(4, 48, 1024) == 4 * 10 * 128
    assert llm.kwargs["enable_chunked_prefill"] is False


def test_kv_pool_is_sized_by_the_limits_not_the_gpu():
    # 20 slots x 1072 tokens: 25,600 tokens, ~1.2 GB of INT8 KV for Orpheus 3B (28 layers x 8 heads x 128 x 2),
    # where free_gpu_memory_fraction=0.92 alone would give the pool ~70 GB of an 80 GB GPU.
    tokens = kv_cache_tokens(20, 48, 1024)
    assert tokens == 25_600
    assert tokens * 28 * 8 * 128 * 2 < 1.5e9


async def test_engine_loads_off_the_event_loop(api, engine_dir):
    """The engine load blocks for tens of seconds on a GPU; the loop must keep serving /healthz."""
    api.LLM.init_seconds = 0.6
    gaps = []

    async def tick():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await _started(engine_dir)
    ticker.cancel()
    assert api.LLM.instances[0].thread != threading.get_ident()
    assert len(gaps) >= 10 and max(gaps) < 0.3, max(gaps)


async def test_start_without_tokenizer_files_skips_tokenizer(api, engine_dir):
    (engine_dir / "model" / "tokenizer.json").unlink()
    await _started(engine_dir)
    assert api.LLM.instances[0].kwargs["skip_tokenizer_init"] is True


async def test_start_without_tensorrt_llm_is_an_engine_error(engine_dir, monkeypatch):
    drop_modules()
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as when not installed
    with pytest.raises(EngineError, match="TensorRT-LLM is not installed") as e:
        await TrtllmEngine(engine_dir, _cfg(), Spec()).start()
    assert e.value.kind == "startup"


async def test_limits_above_the_built_engine_are_refused_at_start(api, engine_dir):
    from orpheus_tts.build import manifest

    built = manifest.Manifest(
        backend="trtllm",
        model_repo="m",
        requested_revision=None,
        resolved_commit=None,
        weight_quantization="int4_awq",
        kv_cache_dtype="int8",
        max_batch_size=16,
        max_input_len=48,
        max_output_len=1024,
    )
    manifest.write(built, engine_dir)
    with pytest.raises(EngineError, match=r"max_batch_size=20 > 16") as e:
        await TrtllmEngine(engine_dir, _cfg(max_batch_size=20), Spec()).start()
    assert e.value.kind == "startup" and not api.LLM.instances
    await _started(engine_dir, max_batch_size=8, max_output_len=512)  # below the build: fine


async def test_every_sampling_field_is_mapped(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]])
    await _collect(
        engine,
        _req(
            prompt=[5, 6, 7],
            temperature=0.4,
            top_p=0.9,
            repetition_penalty=1.15,
            max_tokens=300,
            min_tokens=10,
            seed=42,
        ),
    )
    [result] = api.LLM.instances[0].results
    p = result.sampling_params
    assert result.prompt_token_ids == [5, 6, 7]
    assert (p.temperature, p.top_p, p.repetition_penalty) == (0.4, 0.9, 1.15)
    assert (p.max_tokens, p.min_tokens, p.seed) == (300, 10, 42)
    assert p.end_id == EOS and p.detokenize is False
    assert p.stop_token_ids is None  # with min_tokens, the other stop ids are cut by the engine (below)
    await _collect(engine, _req("r2"))
    assert api.LLM.instances[0].results[1].sampling_params.stop_token_ids == [EOS, END_OF_AI, END_OF_TEXT]


async def test_unseeded_requests_get_a_random_seed(api, engine_dir):
    """seed=None would reach the C++ runtime as seed 0 for every request: identical audio for identical
    input, and a retry repeating the same glitch."""
    engine = await _started(engine_dir)
    for i in range(4):
        await _collect(engine, _req(f"r{i}"))
    await _collect(engine, _req("seeded", seed=7))
    seeds = [r.sampling_params.seed for r in api.LLM.instances[0].results]
    assert None not in seeds and len(set(seeds[:4])) == 4 and seeds[4] == 7


@pytest.mark.parametrize("stop", [EOS, END_OF_AI, END_OF_TEXT])
async def test_end_of_ai_and_end_of_text_stop_too(api, engine_dir, stop):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A, A + 1], [A + 2, stop, A + 3], [A + 4]])
    assert await _collect(engine, _req()) == [[A, A + 1], [A + 2]]
    assert engine.occupancy().active == 0


async def test_stop_ids_before_min_tokens_are_dropped_not_yielded(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A, END_OF_TEXT, A + 1], [A + 2, END_OF_AI, A + 3]])
    assert await _collect(engine, _req(min_tokens=3, max_tokens=10)) == [[A, A + 1], [A + 2]]


def test_take():
    stops = frozenset({EOS, END_OF_TEXT})
    assert take([A, A + 1], stops, 0, 0, 10) == ([A, A + 1], False)
    assert take([A, EOS, A + 1], stops, 0, 0, 10) == ([A], True)
    assert take([A, EOS, A + 1], stops, 0, 5, 10) == ([A, A + 1], False)  # before min_tokens: dropped
    assert take([A, EOS], stops, 4, 5, 10) == ([A], True)  # the 5th token is out: stop honoured
    assert take([A] * 5, stops, 8, 0, 10) == ([A, A], False)  # never beyond max_tokens


async def test_max_tokens_is_always_set_not_the_library_default(api, engine_dir):
    engine = await _started(engine_dir)
    await _collect(engine, _req())
    assert api.LLM.instances[0].results[0].sampling_params.max_tokens == SamplingParams().max_tokens == 1024


async def test_stream_preserves_order_and_chunking(api, engine_dir):
    engine = await _started(engine_dir)
    steps = [[A, A + 1], [A + 2], [A + 3, A + 4, A + 5]]
    api.LLM.behaviour = staticmethod(lambda prompt, params: steps)
    assert await _collect(engine, _req()) == steps


async def test_stop_id_ends_the_stream_and_is_not_yielded(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A, A + 1], [A + 2, EOS], [A + 9]])
    assert await _collect(engine, _req()) == [[A, A + 1], [A + 2]]
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A], [EOS]])
    assert await _collect(engine, _req("r2")) == [[A]]
    assert engine.occupancy().active == 0


async def test_stop_id_the_library_passes_after_end_is_cut_too(api, engine_dir):
    # A stop id that is not end_id (stop_token_ids) must end the stream as well.
    engine = TrtllmEngine(engine_dir, _cfg(), Spec(stop_ids=(EOS, 128264)))
    await engine.start()
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A, 128264, A + 1], [A + 2]])
    assert await _collect(engine, _req()) == [[A]]
    assert api.LLM.instances[0].results[0].abort_calls == 1  # the library had more to say: aborted


async def test_never_more_than_max_tokens(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A] * 3] * 5)
    chunks = await _collect(engine, _req(max_tokens=4))
    assert sum(map(len, chunks)) == 4


async def test_consumer_leaving_early_aborts_and_frees_the_slot(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]] * 100)
    stream = engine.submit(_req())
    assert await stream.__anext__() == [A]
    assert engine.occupancy().active == 1
    await stream.aclose()
    [result] = api.LLM.instances[0].results
    assert result.abort_calls == 1
    assert engine.occupancy().active == 0


async def test_cancel_by_id_aborts_and_ends_the_stream(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]] * 100)
    got = []
    async for chunk in engine.submit(_req("victim")):
        got.append(chunk)
        if len(got) == 2:
            engine.cancel("victim")
    assert len(got) == 2  # the aborted stream ended instead of running to 100...
    result = api.LLM.instances[0].results[0]
    assert result.abort_calls == 1
    assert result.delivered_after_abort >= 1  # ...and the steps the executor still delivered were dropped
    assert engine.occupancy().active == 0
    engine.cancel("unknown")  # no-op


async def test_cancelled_task_aborts(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]] * 10_000)
    first = asyncio.Event()

    async def consume():
        async for _ in engine.submit(_req()):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert api.LLM.instances[0].results[0].abort_calls == 1
    assert engine.occupancy().active == 0


async def test_request_failure_is_an_engine_error_and_others_continue(api, engine_dir):
    engine = await _started(engine_dir)

    def behaviour(prompt, params):
        if prompt == [9]:
            return [[A], api.RequestError("CUDA error in request")]
        return [[A], [A + 1], [A + 2]]

    api.LLM.behaviour = staticmethod(behaviour)
    bad, good = await asyncio.gather(
        _collect(engine, _req("bad", [9])), _collect(engine, _req("good")), return_exceptions=True
    )
    assert isinstance(bad, EngineError) and bad.kind == "trtllm" and "CUDA error" in str(bad)
    assert good == [[A], [A + 1], [A + 2]]
    assert engine.occupancy().active == 0


async def test_generate_async_rejecting_is_an_engine_error(api, engine_dir, monkeypatch):
    engine = await _started(engine_dir)

    def reject(*args, **kwargs):
        raise ValueError("prompt too long for engine")

    monkeypatch.setattr(api.LLM.instances[0], "generate_async", reject)
    with pytest.raises(EngineError, match="prompt too long"):
        await _collect(engine, _req())
    assert engine.occupancy().active == 0


async def test_invalid_requests_are_refused_before_the_library(api, engine_dir):
    engine = await _started(engine_dir, max_input_len=4, max_output_len=100)
    with pytest.raises(EngineError) as e:
        await _collect(engine, _req(prompt=[1] * 5))
    assert e.value.kind == "invalid_request"
    with pytest.raises(EngineError, match="max_tokens"):
        await _collect(engine, _req(max_tokens=101))
    assert api.LLM.instances[0].results == []


async def test_submit_before_start_is_an_error(engine_dir):
    with pytest.raises(EngineError, match="not started"):
        TrtllmEngine(engine_dir, _cfg(), Spec()).submit(_req())


async def test_load_counts_requests_beyond_capacity_as_queued(api, engine_dir):
    engine = await _started(engine_dir, max_batch_size=2)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]] * 100)
    streams = [engine.submit(_req(f"r{i}")) for i in range(3)]
    for s in streams:
        await s.__anext__()
    occupancy = engine.occupancy()
    assert (occupancy.active, occupancy.queued, occupancy.capacity) == (2, 1, 2)
    for s in streams:
        await s.aclose()
    assert engine.occupancy().active == 0


async def test_close_aborts_in_flight_and_shuts_down(api, engine_dir):
    engine = await _started(engine_dir)
    api.LLM.behaviour = staticmethod(lambda prompt, params: [[A]] * 100)
    stream = engine.submit(_req())
    await stream.__anext__()
    await engine.close()
    assert api.LLM.instances[0].results[0].abort_calls >= 1
    assert api.LLM.instances[0].shut_down
    await stream.aclose()
