"""engine.Engine on TensorRT-LLM 1.2.x (TensorRT-engine flow), for engines made by build_engine.py.

TensorRT-LLM does the batching, scheduling and KV cache; this adapter maps our requests onto
`LLM.generate_async(..., streaming=True)` and guarantees the Engine contract on top of it: stop ids are
never yielded, `max_tokens` is always set (the library's default is 32), and a request the consumer
abandons or cancels is aborted so its slot and KV blocks are freed.

Differences from the torch engine that matter for output (docs/engine-build.md, "Known differences"):
- TensorRT-LLM samples over the whole vocabulary. The torch engine samples only codes of the codebook
  block due at each position (sampling.py); here a code from the wrong block can come out, and the frame
  holding it is dropped by audio_codes.py. The torch engine is the reference for a GPU A/B of this.
- Stops: the seed also ended on end-of-AI and end-of-text, so those stop here too (a stray end-of-text
  would otherwise run on for max_tokens of junk). The torch engine cannot produce them at all.

tensorrt_llm is imported in `start()` only: CI and the CPU image do not have it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from orpheus_tts.build import manifest
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine.interface import (
    EngineError,
    EngineOccupancy,
    EngineStats,
    GenerationRequest,
    SamplingParams,
    validate_request,
)

log = logging.getLogger(__name__)

# KV blocks are allocated per sequence in whole blocks; 128 tokens is the largest block size the
# TensorRT flow builds with, so sizing with it never comes out short.
KV_BLOCK_TOKENS = 128


def stop_ids(spec: Any) -> tuple[int, ...]:
    """Every id that ends a stream: the spec's stop ids, end-of-speech, end-of-AI and end-of-text."""
    ids = [*spec.stop_ids, spec.end_of_speech, spec.end_of_ai, spec.end_of_text]
    return tuple(dict.fromkeys(ids))  # de-duplicated, order kept


def kv_cache_tokens(max_batch_size: int, max_input_len: int, max_output_len: int) -> int:
    """Tokens of KV cache the configured limits can ever use: every slot holding a full-length sequence,
    each rounded up to whole blocks plus one spare block. Orpheus needs ~1.2 GB of INT8 KV for 20 slots
    of 1072 tokens; a pool sized from the free-memory fraction alone would take ~70 GB of an 80 GB GPU
    and leave SNAC (loaded after the engine) nothing."""
    per_sequence = -(-(max_input_len + max_output_len) // KV_BLOCK_TOKENS) + 1
    return max_batch_size * per_sequence * KV_BLOCK_TOKENS


def request_seed(seed: int | None) -> int:
    """The seed sent to the library. None must not reach it: TensorRT-LLM turns None into seed 0 for
    every request, so the same sentence and voice would give byte-identical audio and a retry would
    repeat the same glitch. Like the torch engine, an unseeded request gets a random seed."""
    return secrets.randbits(32) if seed is None else seed


def take(
    new_ids: Any, stops: frozenset[int], produced: int, min_tokens: int, max_tokens: int
) -> tuple[list[int], bool]:
    """Pure: the ids of one library step that go to the consumer, and whether the stream stopped.

    A stop id ends the stream once `min_tokens` are out; one before that is dropped (the torch engine
    cannot sample it there; TensorRT-LLM holds back only end_id). Stop ids are never passed on, and
    never more than `max_tokens` in all."""
    out: list[int] = []
    for t in new_ids:
        if t in stops:
            if produced + len(out) >= min_tokens:
                return out, True
            continue
        if produced + len(out) >= max_tokens:
            break
        out.append(t)
    return out, False


@dataclass
class _Inflight:
    result: Any  # the library's RequestOutput / GenerationResult
    cancelled: bool = False
    aborted: bool = False

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            self.result.abort()


class TrtllmEngine:
    def __init__(self, engine_dir: str | pathlib.Path, cfg: RuntimeConfig, spec: Any) -> None:
        self._dir = pathlib.Path(engine_dir)
        self._cfg = cfg
        self._spec = spec
        self._stops = stop_ids(spec)
        self._llm: Any = None
        self._sampling_params_cls: Any = None
        self._inflight: dict[str, _Inflight] = {}
        self.stats = EngineStats()  # the library runs its own loop: nothing to count here

    @property
    def capacity(self) -> int:
        return self._cfg.max_batch_size

    def occupancy(self) -> EngineOccupancy:
        # TensorRT-LLM queues internally beyond max_batch_size and does not expose per-request state,
        # so active/queued are derived from our own count of requests in flight.
        n = len(self._inflight)
        return EngineOccupancy(active=min(n, self.capacity), queued=max(0, n - self.capacity), capacity=self.capacity)

    def _check_limits(self) -> None:
        """The engine's limits are baked in at build time: configured limits above them would fail
        requests later (or be clamped silently by the library), so refuse them at startup."""
        if not (self._dir / manifest.MANIFEST_NAME).exists():
            return
        built = manifest.read(self._dir)
        over = [
            f"{name}={getattr(self._cfg, name)} > {getattr(built, name)}"
            for name in ("max_batch_size", "max_input_len", "max_output_len")
            if getattr(self._cfg, name) > getattr(built, name)
        ]
        if over:
            raise EngineError(
                f"configured limits exceed what the engine in {self._dir} was built for ({', '.join(over)}): "
                "lower TRTLLM_MAX_BATCH_SIZE / TRTLLM_MAX_INPUT_LEN / TRTLLM_MAX_OUTPUT_LEN or rebuild",
                "startup",
            )

    def _construct(self) -> tuple[Any, Any]:
        """Imports TensorRT-LLM and loads the engine: tens of seconds of blocking work (CUDA context,
        engine deserialisation, KV pool), so `start` runs it on a worker thread."""
        try:
            from tensorrt_llm._tensorrt_engine import LLM  # type: ignore[import-not-found]
            from tensorrt_llm.llmapi import KvCacheConfig  # type: ignore[import-not-found]
            from tensorrt_llm.llmapi import SamplingParams as TrtSamplingParams  # type: ignore[import-not-found]
        except ImportError as e:
            raise EngineError(f"TensorRT-LLM is not installed ({e}); use the TensorRT-LLM image", "startup") from e
        model_dir = self._dir / "model"
        tokenizer = (
            {"tokenizer": str(model_dir)} if (model_dir / "tokenizer.json").exists() else {"skip_tokenizer_init": True}
        )
        cfg = self._cfg
        llm = LLM(
            model=str(self._dir / "engine"),
            **tokenizer,
            kv_cache_config=KvCacheConfig(
                # The pool is the smaller of the two: what the limits can use, and the free-memory share.
                max_tokens=kv_cache_tokens(cfg.max_batch_size, cfg.max_input_len, cfg.max_output_len),
                free_gpu_memory_fraction=cfg.kv_free_gpu_frac,
                # INT8 KV turns paged-context FMHA off, which block reuse and chunked prefill depend on.
                enable_block_reuse=False,
            ),
            enable_chunked_prefill=False,
        )
        return llm, TrtSamplingParams

    async def start(self) -> None:
        self._check_limits()
        # Off the event loop: /healthz must keep answering while the engine loads, or the liveness probe
        # restarts the pod in the middle of its load. Requests (generate_async) are still submitted from
        # the loop's thread, which is where the library's per-request queues bind.
        self._llm, self._sampling_params_cls = await asyncio.to_thread(self._construct)

    def _sampling_params(self, p: SamplingParams, max_tokens: int) -> Any:
        return self._sampling_params_cls(
            max_tokens=max_tokens,
            end_id=self._spec.end_of_speech,
            # The library checks stop ids whatever min_tokens says (min_tokens holds back end_id only), so
            # with min_tokens the other stops are left to _stream, which cuts them once min_tokens are out.
            stop_token_ids=list(self._stops) if p.min_tokens == 0 else None,
            temperature=p.temperature,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            min_tokens=p.min_tokens,
            seed=request_seed(p.seed),
            detokenize=False,  # we want ids; detokenizing audio codes is wasted CPU
        )

    def submit(self, request: GenerationRequest) -> AsyncIterator[list[int]]:
        if self._llm is None:
            raise EngineError("engine not started", "startup")
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[list[int]]:
        validate_request(request, self._cfg.max_input_len, self._cfg.max_output_len)
        stops = frozenset(self._stops)
        max_tokens = min(request.params.max_tokens, self._cfg.max_output_len)
        try:
            result = self._llm.generate_async(
                list(request.prompt_ids),
                sampling_params=self._sampling_params(request.params, max_tokens),
                streaming=True,
            )
        except Exception as e:
            raise EngineError(f"TensorRT-LLM rejected the request: {e}", "trtllm") from e
        inflight = self._inflight[request.request_id] = _Inflight(result)
        produced, done = 0, False
        try:
            async for output in result:
                if inflight.cancelled:
                    # An aborted request still delivers a step or two before it ends: nobody wants them.
                    break
                ids, stopped = take(output.outputs[0].token_ids_diff, stops, produced, request.params.min_tokens,
                                    max_tokens)  # fmt: skip
                if ids:
                    produced += len(ids)
                    yield ids
                if stopped or produced >= max_tokens:
                    break
            else:
                done = True  # the library finished the request itself (stop id, length or abort)
        except Exception as e:
            raise EngineError(f"TensorRT-LLM request failed: {e}", "trtllm") from e
        finally:
            self._inflight.pop(request.request_id, None)
            # We stopped reading (stop id or max_tokens seen first, consumer gone, task cancelled):
            # without abort the request would keep decoding into a slot nobody reads.
            if not done and not getattr(result, "finished", False):
                inflight.abort()

    def cancel(self, request_id: str) -> None:
        inflight = self._inflight.get(request_id)
        if inflight is not None:
            inflight.cancelled = True
            inflight.abort()  # the library ends the stream; _stream's finally frees the slot

    async def close(self) -> None:
        for inflight in list(self._inflight.values()):
            inflight.abort()
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)
