import asyncio
import struct
import time

import numpy as np
import pytest
import torch
from test_server import RecordingEngine
from tokenizers import Tokenizer

from orpheus_tts.audio import SAMPLES_PER_FRAME
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import EngineError, EngineOccupancy, SamplingParams
from orpheus_tts.model.model_spec import load_model_spec
from orpheus_tts.speech.audio_codes import frame_to_ids, frames_from_ids
from orpheus_tts.speech.snac_batcher import SnacBatcher
from orpheus_tts.speech.snac_decoder import SnacModel, disable_noise, to_pcm16
from orpheus_tts.speech.synthesizer import SynthesisError, Synthesizer, sampling_params
from orpheus_tts.speech.windows import MAX_EMIT

TEXT = "Hello world. How are you doing today? She sells sea shells by the sea shore."


class FakeEngine:
    """Chunk c yields frames (c, k, 0, ...), k = 0..frames-1, in two pieces per frame; records lifecycles."""

    def __init__(self, frames: int | None = 5, delay: float = 0.0, fail_chunk: int | None = None,
                 stall_at: int | None = None, stall_s: float = 0.0) -> None:  # fmt: skip
        self.frames, self.delay, self.fail_chunk = frames, delay, fail_chunk
        self.stall_at, self.stall_s, self.resumed_at = stall_at, stall_s, None
        self.submitted: list[str] = []
        self.finished: list[str] = []
        self.active = 0

    capacity = 4

    def occupancy(self) -> EngineOccupancy:
        return EngineOccupancy(self.active, 0, self.capacity)

    def submit(self, request):
        self.submitted.append(request.request_id)
        return self._run(request)

    async def _run(self, request):
        chunk = int(request.request_id.rsplit("-", 1)[1])
        self.active += 1
        try:
            k = 0
            while self.frames is None or k < self.frames:
                if chunk == self.fail_chunk and k == 2:
                    raise EngineError("boom", "test")
                if k == self.stall_at:
                    await asyncio.sleep(self.stall_s)
                    self.resumed_at = time.monotonic()
                ids = frame_to_ids((chunk, k, 0, 0, 0, 0, 0))
                yield ids[:3]
                await asyncio.sleep(self.delay)
                yield ids[3:]
                k += 1
        finally:
            self.active -= 1
            self.finished.append(request.request_id)

    def cancel(self, request_id: str) -> None:
        pass


def fake_decode(windows):
    """Each kept frame -> its (chunk, k) as two int16: the output spells the frame order."""
    return [b"".join(struct.pack("<hh", f[0], f[1]) for f in w.frames[w.keep_from : w.keep_to]) for w in windows]


@pytest.fixture(scope="module")
def tokenizer_and_spec(tiny_model_dir):
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")), load_model_spec(tiny_model_dir)


@pytest.fixture
async def make_synth(tokenizer_and_spec):
    batchers = []

    def make(engine, decode=fake_decode, **cfg_kw):
        tokenizer, spec = tokenizer_and_spec
        cfg = RuntimeConfig(max_input_len=20, max_output_len=64, **cfg_kw)
        batcher = SnacBatcher(decode, lambda w: w.n_frames, 64, 1.0)
        batcher.start()
        batchers.append(batcher)
        return Synthesizer(engine, spec, tokenizer, batcher, cfg)

    yield make
    for b in batchers:
        await b.close()


def order(pcm: bytes) -> list[tuple[int, int]]:
    values = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return list(zip(values[::2], values[1::2], strict=True))


async def test_chunks_joined_in_order(make_synth):
    engine = FakeEngine(frames=5)
    synth = make_synth(engine)
    prompts = synth.prompts(TEXT, "tara")
    assert len(prompts) >= 2
    out = b"".join([pcm async for pcm in synth.stream(prompts, SamplingParams(max_tokens=64))])
    assert order(out) == [(c, k) for c in range(len(prompts)) for k in range(5)]
    assert engine.submitted == [engine.submitted[0][:-1] + str(i) for i in range(len(prompts))]
    assert engine.active == 0


async def test_windows_grow_once_the_listener_is_ahead(make_synth):
    sizes: list[int] = []

    def decode(windows):
        sizes.extend(w.keep_to - w.keep_from for w in windows)
        return fake_decode(windows)

    synth = make_synth(FakeEngine(frames=40, delay=0.005), decode=decode)  # ~15x faster than real time
    out = b"".join([pcm async for pcm in synth.stream(synth.prompts("Hello.", "tara"), SamplingParams())])
    assert order(out) == [(0, k) for k in range(40)]
    assert sizes[0] == 1  # first audio as early as possible
    # Frame by frame would be ~39 windows; windows grow with the buffer, up to MAX_EMIT frames.
    assert sizes.count(MAX_EMIT) >= 5 and len(sizes) <= 20


async def test_held_back_frames_go_out_when_the_buffer_runs_low(make_synth):
    engine = FakeEngine(frames=12, delay=0.002, stall_at=9, stall_s=2.0)  # 9 frames fast, then a 2 s pause
    synth = make_synth(engine)
    received: list[tuple[float, list]] = []
    async for pcm in synth.stream(synth.prompts("Hello.", "tara"), SamplingParams()):
        received.append((time.monotonic(), order(pcm)))
    before_resume = [f for t, frames in received if t < engine.resumed_at for f in frames]
    assert before_resume == [(0, k) for k in range(8)]  # all but the right context, during the pause


async def test_no_frames_no_audio_no_error(make_synth):
    synth = make_synth(FakeEngine(frames=0))  # the model stopped at once
    assert [pcm async for pcm in synth.stream(synth.prompts("Hello.", "tara"), SamplingParams())] == []


async def test_closing_the_iterator_frees_the_engine_request(make_synth):
    engine = FakeEngine(frames=None, delay=0.001)  # would never end by itself
    synth = make_synth(engine)
    it = synth.stream(synth.prompts("Hello world.", "tara"), SamplingParams())
    assert await it.__anext__()
    assert engine.active == 1
    await it.aclose()
    assert engine.active == 0 and engine.finished == engine.submitted


async def test_engine_error_raises_synthesis_error(make_synth):
    synth = make_synth(FakeEngine(frames=5, fail_chunk=0))
    with pytest.raises(SynthesisError) as e:
        async for _ in synth.stream(synth.prompts("Hello.", "tara"), SamplingParams()):
            pass
    assert e.value.code == "engine"


async def test_decoder_error_raises_synthesis_error(make_synth):
    def broken(windows):
        raise RuntimeError("no GPU left")

    engine = FakeEngine(frames=5)
    synth = make_synth(engine, decode=broken)
    with pytest.raises(SynthesisError) as e:
        async for _ in synth.stream(synth.prompts("Hello.", "tara"), SamplingParams()):
            pass
    assert e.value.code == "decoder"
    assert engine.active == 0


async def test_bad_input_is_refused_before_streaming(make_synth):
    synth = make_synth(FakeEngine(), max_text_chars=100)
    for text, voice, code in [("Hello", "nobody", "unknown_voice"), ("  \n ", "tara", "empty_text"),
                              ("x" * 101, "tara", "text_too_long")]:  # fmt: skip
        with pytest.raises(SynthesisError) as e:
            synth.prompts(text, voice)
        assert e.value.code == code


def test_sampling_params_validation():
    cfg = RuntimeConfig(max_output_len=100, temperature=0.5)
    p = sampling_params(cfg, {"top_p": 0.9, "max_tokens": 50, "min_tokens": 10, "seed": 3})
    assert (p.temperature, p.top_p, p.max_tokens, p.min_tokens, p.seed) == (0.5, 0.9, 50, 10, 3)
    assert sampling_params(cfg, {}).max_tokens == 100
    for bad in [{"temperature": 5}, {"top_p": 0}, {"max_tokens": 101}, {"min_tokens": 200}, {"max_tokens": "9"},
                {"seed": 1.5}, {"temperature": True}, {"repetition_penalty": 0.5}]:  # fmt: skip
        with pytest.raises(SynthesisError) as e:
            sampling_params(cfg, bad)
        assert e.value.code == "invalid_params"


async def test_real_tiny_model_streamed_equals_offline(make_synth, tiny_model_dir, tokenizer_and_spec):
    """The whole path on the tiny model: engine ids -> frames -> streamed windows == one offline decode."""
    from snac import SNAC

    from orpheus_tts.engine.torch_engine import TorchEngine

    _, spec = tokenizer_and_spec
    cfg = RuntimeConfig(device="cpu", max_input_len=20, max_output_len=64, max_batch_size=2, cuda_graphs=False)
    engine = TorchEngine(tiny_model_dir, cfg, spec)
    await engine.start()
    try:
        torch.manual_seed(0)
        snac = SnacModel(disable_noise(SNAC.from_pretrained(str(tiny_model_dir / "snac"))), torch.device("cpu"))
        rec = RecordingEngine(engine)
        synth = make_synth(rec, decode=snac.decode_windows)
        prompts = synth.prompts("Hello world. How are you?", "tara")
        params = SamplingParams(max_tokens=30, min_tokens=30, seed=1)
        out = np.frombuffer(b"".join([pcm async for pcm in synth.stream(prompts, params)]), np.int16)
        frames = [f for rid in sorted(rec.ids) for f in frames_from_ids(rec.ids[rid], spec.audio_offset)]
        assert len(rec.ids) == len(prompts) and len(frames) == 4 * len(prompts)  # 30 tokens: 4 whole frames
        offline = to_pcm16(snac.decode_frames([tuple(frames)]))[0].numpy()
        assert out.size == offline.size == len(frames) * SAMPLES_PER_FRAME
        err = np.sum((out.astype(float) - offline) ** 2)
        assert 10 * np.log10(np.sum(offline.astype(float) ** 2) / max(err, 1e-9)) >= 40
        assert engine.occupancy().active == 0
    finally:
        await engine.close()
