"""Fake `tensorrt_llm.llmapi`: the classes and fields our code uses, with the 1.2.x names.

Field names and defaults mirror the documented API (SamplingParams.max_tokens defaults to 32,
QuantConfig.group_size to 128, CalibConfig.calib_dataset to "cnn_dailymail").
"""

from __future__ import annotations

import asyncio
import enum
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class QuantAlgo(enum.Enum):
    W4A16_AWQ = "W4A16_AWQ"
    W8A16 = "W8A16"
    INT8 = "INT8"
    FP8 = "FP8"


@dataclass(kw_only=True)
class QuantConfig:
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int | None = 128


@dataclass(kw_only=True)
class CalibConfig:
    device: str = "cuda"
    calib_dataset: str = "cnn_dailymail"
    calib_batches: int = 512
    calib_batch_size: int = 1
    calib_max_seq_length: int = 512
    random_seed: int = 1234
    tokenizer_max_seq_length: int = 2048


@dataclass(kw_only=True)
class BuildConfig:
    max_batch_size: int = 2048
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_num_tokens: int = 8192


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    dtype: str = "auto"


@dataclass(kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    seed: int | None = None
    detokenize: bool = True


class RequestError(RuntimeError):
    """What the real executor raises from a failed request's iterator."""


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int] = field(default_factory=list)
    token_ids_diff: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class RequestOutput:
    """The same object is yielded at every step, as in the real streaming API."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], params: SamplingParams, steps: list[Any]) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = params
        self.outputs = [CompletionOutput(index=0)]
        self.finished = False
        self.aborted = False
        self.abort_calls = 0
        self._steps = list(steps)

    def abort(self) -> None:
        self.abort_calls += 1
        self.aborted = True

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        await asyncio.sleep(0)  # one "engine step": lets other tasks run, as the real executor does
        if self.finished or self.aborted or not self._steps:
            if self.aborted:
                self.outputs[0].finish_reason = "cancelled"
            self.finished = True
            raise StopAsyncIteration
        step = self._steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        out = self.outputs[0]
        room = self.sampling_params.max_tokens - len(out.token_ids)
        new = list(step)[:room]
        end = self.sampling_params.end_id
        if end in new:  # the engine stops at end_id
            new = new[: new.index(end) + 1]
            self._steps = []
            out.finish_reason = "stop"
        out.token_ids += new
        out.token_ids_diff = new
        if len(out.token_ids) >= self.sampling_params.max_tokens:
            self._steps = []
            out.finish_reason = out.finish_reason or "length"
        self.finished = not self._steps
        return self


class _FakeLLM:
    """Both flows: built from an HF dir with quant/build configs (then save()), or loaded from an
    engine dir and used for generate_async()."""

    instances: list[_FakeLLM] = []  # noqa: RUF012 -- the recorder tests read
    # (prompt_token_ids, params) -> list of steps; a step is a list of ids or an exception to raise.
    behaviour: Callable[[list[int], SamplingParams], list[Any]] = staticmethod(lambda prompt, params: [])
    fail_on_init: BaseException | None = None

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        skip_tokenizer_init: bool = False,
        workspace: str | None = None,
        quant_config: QuantConfig | None = None,
        calib_config: CalibConfig | None = None,
        build_config: BuildConfig | None = None,
        kv_cache_config: KvCacheConfig | None = None,
        enable_chunked_prefill: bool = False,
    ) -> None:
        if _FakeLLM.fail_on_init is not None:
            raise _FakeLLM.fail_on_init
        if workspace is not None:  # the real LLM writes its checkpoint and engine there before save()
            (pathlib.Path(workspace) / "ckpt.bin").write_bytes(b"\0" * 32)
        self.kwargs = dict(
            model=model,
            tokenizer=tokenizer,
            skip_tokenizer_init=skip_tokenizer_init,
            workspace=workspace,
            quant_config=quant_config,
            calib_config=calib_config,
            build_config=build_config,
            kv_cache_config=kv_cache_config,
            enable_chunked_prefill=enable_chunked_prefill,
        )
        self.results: list[RequestOutput] = []
        self.saved_to: str | None = None
        self.shut_down = False
        _FakeLLM.instances.append(self)

    def save(self, engine_dir: str) -> None:
        path = pathlib.Path(engine_dir)
        path.mkdir(parents=True)
        (path / "config.json").write_text('{"fake": true}\n')
        (path / "rank0.engine").write_bytes(b"\0" * 64)
        self.saved_to = engine_dir

    def generate_async(
        self, inputs: list[int], sampling_params: SamplingParams | None = None, *, streaming: bool = False
    ) -> RequestOutput:
        asyncio.get_running_loop()  # the real one needs a running event loop too
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError("sampling_params must be a SamplingParams")
        if not streaming:
            raise AssertionError("the double only models streaming=True")
        steps = _FakeLLM.behaviour(list(inputs), sampling_params)
        result = RequestOutput(len(self.results), list(inputs), sampling_params, steps)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.shut_down = True


LLM = _FakeLLM
