"""Text -> 24 kHz mono s16le PCM, streamed: prompts -> engine -> frames -> SNAC windows -> bytes.

Per utterance, two tasks share a `StreamWindows`:
- the generator (a task) walks the sentence chunks in order, one engine request at a time, and turns
  token ids into frames as they arrive; it never waits for the audio side, so a slow client does not
  hold back the engine or other streams (frames are 14 bytes each; they just queue up);
- the caller's iteration takes the next decode window whenever one is ready and awaits the batcher.
All chunks feed ONE window stream, so SNAC sees the chunk boundaries as continuous audio: no clicks, no
gaps, and each sample is produced once, in order.

Closing the iterator (client gone, cancel) cancels the generator task, which closes the engine stream:
the slot is free within one engine step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from orpheus_tts.audio import FRAMES_PER_S
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import Engine, EngineError, GenerationRequest, SamplingParams
from orpheus_tts.model.model_spec import ModelSpec
from orpheus_tts.protocol import INTEGER_SAMPLING_FIELDS, SAMPLING_FIELDS
from orpheus_tts.serve.metrics import Metrics
from orpheus_tts.speech.audio_codes import FrameAssembler
from orpheus_tts.speech.prompts import PromptError, Tokenizer, build_prompts
from orpheus_tts.speech.snac_batcher import SnacBatcher
from orpheus_tts.speech.windows import StreamWindows, Window, listener_deadline, plan_emit


def buffered_s(emitted_frames: int, first_audio_at: float | None) -> float | None:
    """Audio the listener has received but not yet heard, assuming playback from the first byte on (None
    before the first byte)."""
    if first_audio_at is None:
        return None
    return emitted_frames / FRAMES_PER_S - (time.monotonic() - first_audio_at)


class SynthesisError(Exception):
    """`code` is a stable label for clients and metrics: unknown_voice, empty_text, text_too_long,
    invalid_params (bad input, before any audio) or engine, decoder (failures while streaming)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def sampling_params(cfg: RuntimeConfig, overrides: Mapping[str, Any]) -> SamplingParams:
    """Server defaults, then the request's values; out-of-range or mistyped values are refused, not ignored."""
    base = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
                          max_tokens=cfg.max_output_len)  # fmt: skip
    values: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = overrides.get(name)
        if value is None:
            continue
        integral = name in INTEGER_SAMPLING_FIELDS
        ok = isinstance(value, int) if integral else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise SynthesisError(f"{name} must be {'an integer' if integral else 'a number'}", "invalid_params")
        values[name] = value
    try:
        return replace(base, **values).validate(cfg.max_output_len)
    except ValueError as e:
        raise SynthesisError(str(e), "invalid_params") from None


@dataclass
class Utterance:
    """What the generator hands the audio side."""

    windows: StreamWindows
    wake: asyncio.Event
    started: float
    tokens: int = 0
    dropped_frames: int = 0


class Synthesizer:
    def __init__(self, engine: Engine, spec: ModelSpec, tokenizer: Tokenizer, batcher: SnacBatcher[Window, bytes],
                 cfg: RuntimeConfig, metrics: Metrics | None = None) -> None:  # fmt: skip
        self.engine, self.spec, self.tokenizer, self.batcher = engine, spec, tokenizer, batcher
        self.cfg = cfg
        self.metrics = metrics or Metrics()

    def prompts(self, text: str, voice: str) -> list[list[int]]:
        """Checked before streaming starts, so bad input is an error message, never half an utterance."""
        if len(text) > self.cfg.max_text_chars:
            raise SynthesisError(f"text has {len(text)} characters, more than {self.cfg.max_text_chars}",
                                 "text_too_long")  # fmt: skip
        try:
            return build_prompts(text, voice, self.tokenizer, self.spec, self.cfg.max_input_len)
        except PromptError as e:
            raise SynthesisError(str(e), e.code) from None

    async def stream(self, prompts: list[list[int]], params: SamplingParams) -> AsyncGenerator[bytes, None]:
        """PCM chunks of the whole utterance, in order. Raises SynthesisError if generation or decoding fails."""
        start = time.monotonic()
        utt = Utterance(StreamWindows(), asyncio.Event(), start)
        generator = asyncio.create_task(self._generate(prompts, params, utt), name="generate")
        first_audio_at: float | None = None
        try:
            while True:
                utt.wake.clear()  # before looking: a frame arriving after the look sets it again
                finished = generator.done()
                if finished and generator.exception() is not None:
                    raise generator.exception()  # type: ignore[misc]
                buffered = buffered_s(utt.windows.emitted, first_audio_at)
                plan = plan_emit(buffered, self.cfg.emit_policy)
                window = utt.windows.next_window(final=finished, min_emit=plan.min_emit)
                if window is None:
                    if finished:
                        break
                    # A new frame wakes us, or the buffer shrinking to where fewer frames must go out.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(utt.wake.wait(), plan.recheck_s)
                    continue
                # The listener runs dry once the frames sent before this window have played.
                sent_before = utt.windows.emitted - (window.keep_to - window.keep_from)
                deadline = listener_deadline(first_audio_at, sent_before, time.monotonic())
                try:
                    pcm = await self.batcher.decode(window, deadline)
                except Exception as e:
                    raise SynthesisError(f"audio decoding failed: {e}", "decoder") from e
                if first_audio_at is None:
                    first_audio_at = time.monotonic()
                    self.metrics.first_audio.observe(first_audio_at - start)
                yield pcm
        finally:
            generator.cancel()
            await asyncio.gather(generator, return_exceptions=True)
        audio_s = utt.windows.emitted / FRAMES_PER_S
        self.metrics.audio_seconds.inc(audio_s)
        if audio_s > 0:
            self.metrics.real_time_factor.observe((time.monotonic() - start) / audio_s)

    async def _generate(self, prompts: list[list[int]], params: SamplingParams, utt: Utterance) -> None:
        base_id = uuid.uuid4().hex[:12]
        try:
            for i, prompt in enumerate(prompts):
                # Different seeds per chunk: the same seed would start every sentence alike.
                chunk_params = params if params.seed is None else replace(params, seed=params.seed + i)
                await self._generate_chunk(GenerationRequest(f"{base_id}-{i}", prompt, chunk_params), utt)
        except EngineError as e:  # counted in metrics by the caller, as code "engine"
            raise SynthesisError(f"generation failed ({e.kind}): {e}", "engine") from e
        finally:
            utt.wake.set()

    async def _generate_chunk(self, request: GenerationRequest, utt: Utterance) -> None:
        frames = FrameAssembler(self.spec.audio_offset, self.spec.codebook_size)
        stream = self.engine.submit(request)
        try:
            async for ids in stream:
                if utt.tokens == 0:
                    self.metrics.first_token.observe(time.monotonic() - utt.started)
                utt.tokens += len(ids)
                self.metrics.generated_tokens.inc(len(ids))
                new = frames.push(ids)
                if new:
                    utt.windows.add(new)
                    utt.wake.set()
        finally:
            # Frees the slot at once when we stop early (cancel, client gone); a no-op after a normal end.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
            else:
                self.engine.cancel(request.request_id)
            if frames.dropped_frames:
                utt.dropped_frames += frames.dropped_frames
                self.metrics.dropped_frames.inc(frames.dropped_frames)
