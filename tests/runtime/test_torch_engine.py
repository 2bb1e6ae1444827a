import asyncio
import pathlib

import pytest
import torch

from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import EngineError, GenerationRequest, SamplingParams
from orpheus_tts.engine.step_graphs import DecodeGraphs, PrefillGraphs
from orpheus_tts.engine.torch_engine import TorchEngine
from orpheus_tts.model.model_spec import load_model_spec

PROMPTS = [[128259, 128000, 83, 64, 25, 467, 475, 128009, 128260, 128261, 128257],
           [128259, 128000, 500, 501, 128009, 128260, 128261, 128257],
           [128259, 128000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 128009, 128260, 128261, 128257]]  # fmt: skip
STOP = 128258


@pytest.fixture
async def make_engine(tiny_model_dir: pathlib.Path):
    engines = []

    async def make(capacity: int = 4, max_output_len: int = 64) -> TorchEngine:
        cfg = RuntimeConfig(model=str(tiny_model_dir), device="cpu", max_batch_size=capacity,
                            max_input_len=24, max_output_len=max_output_len)  # fmt: skip
        engine = TorchEngine(tiny_model_dir, cfg, load_model_spec(tiny_model_dir))
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        await e.close()


def _req(rid: str, prompt: int = 0, **params) -> GenerationRequest:
    return GenerationRequest(rid, PROMPTS[prompt % len(PROMPTS)], SamplingParams(**params))


async def _collect(stream) -> list[int]:
    out = []
    async for ids in stream:
        out += ids
    return out


def _assert_audio_constrained(ids: list[int]) -> None:
    for i, tok in enumerate(ids):
        assert 128266 + (i % 7) * 4096 <= tok < 128266 + (i % 7 + 1) * 4096, (i, tok)


async def test_many_concurrent_requests_queue(make_engine):
    engine = await make_engine(capacity=4)
    lengths = [5 + 3 * i for i in range(16)]
    seen = []

    async def run(i: int) -> list[list[int]]:
        out = []
        async for ids in engine.submit(_req(f"r{i}", i, max_tokens=lengths[i], min_tokens=lengths[i])):
            out.append(ids)
            seen.append(engine.occupancy())
        return out

    results = await asyncio.gather(*(run(i) for i in range(16)))
    for i, chunks in enumerate(results):
        # Whole frames, then the remainder: a frame's consumer can use nothing smaller.
        assert [len(c) for c in chunks] == [7] * (lengths[i] // 7) + ([lengths[i] % 7] if lengths[i] % 7 else [])
        ids = [t for c in chunks for t in c]
        assert len(ids) == lengths[i]
        _assert_audio_constrained(ids)
    assert max(o.active for o in seen) == 4
    assert max(o.queued for o in seen) > 0  # requests really waited for a slot
    assert engine.occupancy().active == 0 and engine.occupancy().queued == 0


async def test_batched_equals_single(make_engine):
    """Seeded (and greedy) requests give the same tokens alone and in a batch: slots don't leak."""
    engine = await make_engine(capacity=3)
    reqs = [_req(f"s{i}", i, max_tokens=30 + 4 * i, min_tokens=30 + 4 * i, seed=100 + i,
                 temperature=0.0 if i == 2 else 0.8, top_p=0.9, repetition_penalty=1.3) for i in range(5)]  # fmt: skip
    alone = [await _collect(engine.submit(r)) for r in reqs]

    async def delayed(r: GenerationRequest, delay: float) -> list[int]:
        await asyncio.sleep(delay)  # staggered joins: requests enter while others are mid-decode
        return await _collect(engine.submit(r))

    together = await asyncio.gather(*(delayed(r, 0.02 * i) for i, r in enumerate(reqs)))
    assert together == alone
    # Different seeds really give different streams; the same seed twice gives the same one.
    assert alone[0] != alone[1][: len(alone[0])]
    again = await _collect(engine.submit(GenerationRequest("x", reqs[0].prompt_ids, reqs[0].params)))
    assert again == alone[0]


async def test_unseeded_requests_differ(make_engine):
    """seed=None draws a random seed per request (issue 14, item 6: TensorRT-LLM's default would be seed 0 for
    all): the same prompt twice, unseeded, gives two different streams."""
    engine = await make_engine(capacity=2)
    a, b = await asyncio.gather(*(_collect(engine.submit(_req(f"u{i}", max_tokens=21, min_tokens=21))) for i in (0, 1)))
    assert a != b


async def test_cancel_frees_slot(make_engine):
    engine = await make_engine(capacity=1, max_output_len=2000)
    long = engine.submit(_req("long", max_tokens=2000, min_tokens=2000))
    queued = asyncio.create_task(_collect(engine.submit(_req("queued", max_tokens=10, min_tokens=10))))
    got = [await long.__anext__() for _ in range(3)]
    assert engine.occupancy().queued == 1
    engine.cancel("long")
    rest = await _collect(long)  # the stream ends quietly
    assert len(got) + len(rest) < 2000
    assert len(await asyncio.wait_for(queued, 10)) == 10


async def test_abandoned_iterator_and_cancelled_task_free_slot(make_engine):
    engine = await make_engine(capacity=1, max_output_len=2000)
    n = 0
    async for _ in engine.submit(_req("abandoned", max_tokens=2000, min_tokens=2000)):
        n += 1
        if n == 2:
            break  # the stream object is dropped here; nothing calls cancel() explicitly
    assert len(await asyncio.wait_for(_collect(engine.submit(_req("next", max_tokens=5))), 10)) <= 5

    task = asyncio.create_task(_collect(engine.submit(_req("task", max_tokens=2000, min_tokens=2000))))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(await asyncio.wait_for(_collect(engine.submit(_req("after", max_tokens=7, min_tokens=7))), 10)) == 7


async def test_stop_and_min_tokens(make_engine):
    engine = await make_engine(capacity=2)
    # Make the model want to stop at every step: the stop id's logit is the last output row.
    model = engine.runner.model
    logits = model.logits
    model.logits = lambda h: logits(h) + torch.nn.functional.one_hot(
        torch.tensor(model.out_weight.shape[0] - 1), model.out_weight.shape[0]) * 1e4  # fmt: skip
    assert await _collect(engine.submit(_req("stop-now", max_tokens=50))) == []  # stop at i == 0
    # min_tokens 9: no stop before, then the first frame boundary (14) ends it.
    ids = await _collect(engine.submit(_req("stop-later", max_tokens=50, min_tokens=9)))
    assert len(ids) == 14 and STOP not in ids
    _assert_audio_constrained(ids)
    assert len(await _collect(engine.submit(_req("fixed", max_tokens=20, min_tokens=20)))) == 20


async def test_bad_requests_fail_alone(make_engine):
    engine = await make_engine(capacity=2)
    good = asyncio.create_task(_collect(engine.submit(_req("good", max_tokens=40, min_tokens=40))))
    bad = [
        GenerationRequest("b1", [1, 2, 200_000]),
        GenerationRequest("b2", []),
        GenerationRequest("b3", list(range(25))),
        GenerationRequest("b4", PROMPTS[0], SamplingParams(max_tokens=65)),
        GenerationRequest("b5", PROMPTS[0], SamplingParams(top_p=0.0)),
        GenerationRequest("good", PROMPTS[0], SamplingParams(max_tokens=10)),  # duplicate id while "good" runs
    ]
    kinds = []
    for r in bad:
        with pytest.raises(EngineError) as e:
            await _collect(engine.submit(r))
        kinds.append(e.value.kind)
    assert kinds == ["invalid_request"] * 5 + ["duplicate_request"]
    assert len(await good) == 40


async def test_prefill_failure_fails_only_that_request(make_engine):
    engine = await make_engine(capacity=4)
    prefill = engine.runner.model.prefill

    def flaky(tokens, slots, lengths):
        if bool((tokens == 501).any()):  # PROMPTS[1] breaks prefill
            raise RuntimeError("boom")
        return prefill(tokens, slots, lengths)

    engine.runner.model.prefill = flaky
    results = await asyncio.gather(*(_collect(engine.submit(_req(f"p{i}", i, max_tokens=8, min_tokens=8)))
                                     for i in range(3)), return_exceptions=True)  # fmt: skip
    assert isinstance(results[1], EngineError) and "boom" in str(results[1])
    assert len(results[0]) == 8 and len(results[2]) == 8


async def test_not_started_and_closed(make_engine, tiny_model_dir):
    engine = TorchEngine(tiny_model_dir, RuntimeConfig(device="cpu"), load_model_spec(tiny_model_dir))
    with pytest.raises(EngineError) as e:
        await _collect(engine.submit(_req("x")))
    assert e.value.kind == "not_running"
    engine = await make_engine(capacity=1, max_output_len=2000)
    running = asyncio.create_task(_collect(engine.submit(_req("r", max_tokens=2000, min_tokens=2000))))
    await asyncio.sleep(0.05)
    await engine.close()
    with pytest.raises(EngineError) as e:
        await asyncio.wait_for(running, 10)
    assert e.value.kind == "closed"


async def test_padded_buckets_give_same_tokens(make_engine):
    """The CUDA-graph path's padding (extra entries on the scratch slot, prompts padded to a length bucket,
    prompts split over several prefills) changes no request's tokens."""
    engine = await make_engine(capacity=6)
    assert engine.runner.graphs is None and engine.runner.prefill_graphs is None  # CPU: no graphs
    lengths = [9, 16, 23]

    async def run(tag: str) -> list[list[int]]:
        return await asyncio.gather(*(_collect(engine.submit(_req(f"{tag}{i}", i, max_tokens=n, min_tokens=n, seed=i)))
                                      for i, n in enumerate(lengths)))  # fmt: skip

    plain = await run("plain")
    runner = engine.runner
    runner.graphs = DecodeGraphs(runner.model, runner.sampler, runner.state, runner.capacity, runner.scratch_slot,
                                 capture=False)  # fmt: skip
    runner.prefill_graphs = PrefillGraphs(runner.model, runner.sampler, runner.state, 2, runner.cfg.max_input_len,
                                          runner.scratch_slot, capture=False)  # fmt: skip
    assert await run("padded") == plain


async def test_engine_thread_crash_fails_streams_not_hangs(make_engine):
    engine = await make_engine(capacity=2)

    def crash() -> None:
        raise RuntimeError("scheduler bug")

    engine._step = crash  # an internal bug: the engine thread dies
    with pytest.raises(EngineError, match="scheduler bug"):
        await asyncio.wait_for(_collect(engine.submit(_req("a", max_tokens=5))), 10)
    with pytest.raises(EngineError) as e:
        await _collect(engine.submit(_req("b", max_tokens=5)))
    assert e.value.kind == "engine" and "internal error" in str(e.value)
