"""engine.Engine on TensorRT-LLM 1.2.x (TensorRT-engine flow), for engines made by build_engine.py.

TensorRT-LLM does the batching, scheduling and KV cache; this adapter maps our requests onto
`LLM.generate_async(..., streaming=True)` and guarantees the Engine contract on top of it: stop ids are
never yielded, `max_tokens` is always set (the library's default is 32), and a request the consumer
abandons or cancels is aborted so its slot and KV blocks are freed.

tensorrt_llm is imported in `start()` only: CI and the CPU image do not have it.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

from orpheus_tts import manifest
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.engine import EngineError, EngineLoad, EngineStats, GenerationRequest, SamplingParams


class TrtllmEngine:
    def __init__(self, engine_dir: str | pathlib.Path, cfg: RuntimeConfig, spec: Any) -> None:
        self._dir = pathlib.Path(engine_dir)
        self._cfg = cfg
        self._spec = spec
        self._llm: Any = None
        self._sampling_params_cls: Any = None
        self._inflight: dict[str, Any] = {}  # request_id -> the library's RequestOutput
        self.stats = EngineStats()  # the library runs its own loop: nothing to count here

    @property
    def capacity(self) -> int:
        return self._cfg.max_batch_size

    def load(self) -> EngineLoad:
        # TensorRT-LLM queues internally beyond max_batch_size and does not expose per-request state,
        # so active/queued are derived from our own count of requests in flight.
        n = len(self._inflight)
        return EngineLoad(active=min(n, self.capacity), queued=max(0, n - self.capacity), capacity=self.capacity)

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

    async def start(self) -> None:
        self._check_limits()
        try:
            from tensorrt_llm._tensorrt_engine import LLM
            from tensorrt_llm.llmapi import KvCacheConfig
            from tensorrt_llm.llmapi import SamplingParams as TrtSamplingParams
        except ImportError as e:
            raise EngineError(f"TensorRT-LLM is not installed ({e}); use the TensorRT-LLM image", "startup") from e
        model_dir = self._dir / "model"
        tokenizer = (
            {"tokenizer": str(model_dir)} if (model_dir / "tokenizer.json").exists() else {"skip_tokenizer_init": True}
        )
        # Constructed on the event loop's thread on purpose: the executor may install signal handlers
        # and bind to the loop, which must not happen on a worker thread. It is a one-off at startup.
        self._llm = LLM(
            model=str(self._dir / "engine"),
            **tokenizer,
            # INT8 KV turns paged-context FMHA off, which block reuse and chunked prefill depend on.
            kv_cache_config=KvCacheConfig(
                free_gpu_memory_fraction=self._cfg.kv_free_gpu_frac, enable_block_reuse=False
            ),
            enable_chunked_prefill=False,
        )
        self._sampling_params_cls = TrtSamplingParams

    def _sampling_params(self, p: SamplingParams, max_tokens: int) -> Any:
        return self._sampling_params_cls(
            max_tokens=max_tokens,
            end_id=self._spec.end_of_speech,
            stop_token_ids=list(self._spec.stop_ids),
            temperature=p.temperature,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            min_tokens=p.min_tokens,
            seed=p.seed,
            detokenize=False,  # we want ids; detokenizing audio codes is wasted CPU
        )

    def submit(self, request: GenerationRequest) -> AsyncIterator[list[int]]:
        if self._llm is None:
            raise EngineError("engine not started", "startup")
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[list[int]]:
        try:
            request.params.validate(self._cfg.max_output_len)
        except ValueError as e:
            raise EngineError(str(e), "invalid_request") from None
        if not request.prompt_ids or len(request.prompt_ids) > self._cfg.max_input_len:
            raise EngineError(
                f"prompt has {len(request.prompt_ids)} tokens; the engine takes 1..{self._cfg.max_input_len}",
                "invalid_request",
            )
        stops = set(self._spec.stop_ids) | {self._spec.end_of_speech}
        max_tokens = min(request.params.max_tokens, self._cfg.max_output_len)
        try:
            result = self._llm.generate_async(
                list(request.prompt_ids),
                sampling_params=self._sampling_params(request.params, max_tokens),
                streaming=True,
            )
        except Exception as e:
            raise EngineError(f"TensorRT-LLM rejected the request: {e}", "trtllm") from e
        self._inflight[request.request_id] = result
        produced, done = 0, False
        try:
            async for output in result:
                ids = list(output.outputs[0].token_ids_diff)
                cut = next((i for i, t in enumerate(ids) if t in stops), None)
                ids = ids[: max_tokens - produced] if cut is None else ids[:cut]
                if ids:
                    produced += len(ids)
                    yield ids
                if cut is not None or produced >= max_tokens:
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
                result.abort()

    def cancel(self, request_id: str) -> None:
        result = self._inflight.get(request_id)
        if result is not None:
            result.abort()  # the library ends the stream; _stream's finally frees the slot

    async def close(self) -> None:
        for result in list(self._inflight.values()):
            result.abort()
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
