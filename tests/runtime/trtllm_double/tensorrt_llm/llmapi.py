"""Fake `tensorrt_llm.llmapi`: the classes and fields our code uses, with the 1.2.x names.

Field names and defaults mirror the documented API (SamplingParams.max_tokens defaults to 32,
QuantConfig.group_size to 128, CalibConfig.calib_dataset to "cnn_dailymail").

Behaviour copied from the 1.2.x sources where our code depends on it:
- `abort()` does not end a stream at once: the executor still delivers the steps already in flight
  (one or two) and then finishes with finish_reason "cancelled" (`steps_after_abort`).
- Calibration reads its dataset the way the library does (`_load_calibration_rows`): the modelopt path
  (INT4-AWQ) takes a local directory's `train` split; the native path (INT8 weights / INT8 KV without
  AWQ) goes through `load_calib_dataset`, which only knows a split for dataset names it recognises in
  the path and otherwise fails with `KeyError: None`.
- `PluginConfig` validates assignments (a pydantic model with validate_assignment in 1.2.x).
"""

from __future__ import annotations

import asyncio
import enum
import json
import pathlib
import threading
import time
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


GEMM_PLUGIN_VALUES = ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", None)


@dataclass(kw_only=True)
class PluginConfig:
    gemm_plugin: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in {"gemm_plugin"}:
            raise AttributeError(f"PluginConfig has no field {name!r}")
        if name == "gemm_plugin" and value not in GEMM_PLUGIN_VALUES:
            raise ValueError(f"gemm_plugin must be one of {GEMM_PLUGIN_VALUES}, got {value!r}")
        object.__setattr__(self, name, value)


@dataclass(kw_only=True)
class BuildConfig:
    max_batch_size: int = 2048
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_num_tokens: int = 8192
    plugin_config: PluginConfig = field(default_factory=PluginConfig)


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
    seed: int | None = None  # None: the C++ runtime's seed 0, the same for every request
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
        self.delivered_after_abort = 0
        self._steps = list(steps)

    def abort(self) -> None:
        self.abort_calls += 1
        if not self.aborted:
            self.aborted = True
            self._steps = self._steps[: _FakeLLM.steps_after_abort]  # already in flight: still delivered

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        await asyncio.sleep(0)  # one "engine step": lets other tasks run, as the real executor does
        if self.finished or not self._steps:
            if self.aborted:
                self.outputs[0].finish_reason = "cancelled"
            self.finished = True
            raise StopAsyncIteration
        step = self._steps.pop(0)
        if self.aborted:
            self.delivered_after_abort += 1
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
        self.finished = not self._steps and not self.aborted
        return self


# The dataset names `tensorrt_llm.models.convert_utils.load_calib_dataset` recognises, matched as
# substrings of the name or path: (config name, split, text column).
DEFAULT_HF_DATASET_META = {
    "ccdv/cnn_dailymail": ("3.0.0", "train", "article"),
    "cnn_dailymail": ("3.0.0", "train", "article"),
    "lambada": (None, "validation", "text"),
}
MODELOPT_ALGOS = (QuantAlgo.W4A16_AWQ, QuantAlgo.FP8)


def _read_split(directory: pathlib.Path, split: str | None, column: str) -> list[str]:
    """`datasets.load_dataset(directory, split=split)[column]` for a directory of JSON-lines files,
    whose splits are named by their files (train.jsonl, validation.jsonl)."""
    files = {p.stem.split("-")[0]: p for p in directory.glob("*.jsonl")}
    if not files:
        raise FileNotFoundError(f"Unable to find data files in {directory}")
    if split is None:
        raise KeyError(None)  # a DatasetDict indexed with key=None, as in the real native path
    if split not in files:
        raise ValueError(f'Unknown split "{split}". Should be one of {sorted(files)}.')
    rows = [json.loads(line) for line in files[split].read_text().splitlines() if line.strip()]
    return [row[column] for row in rows]


def _load_calibration_rows(quant: QuantConfig, calib: CalibConfig) -> list[str] | None:
    needs = quant.quant_algo in MODELOPT_ALGOS or quant.kv_cache_quant_algo in (QuantAlgo.INT8, QuantAlgo.FP8)
    if not needs:
        return None
    name = calib.calib_dataset
    local = pathlib.Path(name).is_dir()
    if quant.quant_algo in MODELOPT_ALGOS:  # quantize_by_modelopt.get_calib_dataloader
        if "cnn_dailymail" in name:
            raise ConnectionError("the hub is not reachable from the test double (cnn_dailymail)")
        if not local:
            raise NotImplementedError(f"Unsupported dataset name or local repo directory: {name}.")
        return _read_split(pathlib.Path(name), "train", "text")
    split = key = None  # convert_utils.load_calib_dataset
    for known, meta in DEFAULT_HF_DATASET_META.items():
        if known in name:
            _, split, key = meta
            break
    if not local:
        raise ConnectionError(f"the hub is not reachable from the test double ({name})")
    return _read_split(pathlib.Path(name), split, key or "text")


class _FakeLLM:
    """Both flows: built from an HF dir with quant/build configs (then save()), or loaded from an
    engine dir and used for generate_async()."""

    instances: list[_FakeLLM] = []  # noqa: RUF012 -- the recorder tests read
    # (prompt_token_ids, params) -> list of steps; a step is a list of ids or an exception to raise.
    behaviour: Callable[[list[int], SamplingParams], list[Any]] = staticmethod(lambda prompt, params: [])
    fail_on_init: BaseException | None = None
    init_seconds: float = 0.0  # how long construction blocks its thread (engine load / calibration)
    steps_after_abort: int = 2  # steps the executor still delivers after abort()

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
        self.thread = threading.get_ident()
        time.sleep(_FakeLLM.init_seconds)
        self.calibration_rows = (
            _load_calibration_rows(quant_config, calib_config or CalibConfig()) if quant_config else None
        )
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
