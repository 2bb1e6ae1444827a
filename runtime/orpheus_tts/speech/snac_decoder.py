"""SNAC windows -> 24 kHz PCM on the device: the SNAC network, its CUDA graphs and its loading. Which frames
form a window, and why, is windows.py (pure, no torch).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Callable
from typing import cast

import torch

from orpheus_tts.audio import SAMPLES_PER_FRAME
from orpheus_tts.config import RuntimeConfig
from orpheus_tts.devices import pick_device
from orpheus_tts.engine.cuda_graphs import GraphSet, batch_buckets, bucket_for
from orpheus_tts.speech.audio_codes import Frame, snac_codes
from orpheus_tts.speech.windows import WINDOW_FRAMES, Window

log = logging.getLogger(__name__)

SNAC_FILES = ["config.json", "pytorch_model.bin"]


class SnacLoadError(RuntimeError):
    """The SNAC decoder cannot be loaded; the message says why (the server reports it like a LoadError)."""


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class _Snake(torch.nn.Module):
    """snac's Snake1d without its TorchScript function (torch.compile cannot trace into TorchScript)."""

    def __init__(self, alpha: torch.nn.Parameter) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _snake(x, self.alpha)


def fold_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The same function, cheaper: weight_norm recomputes every conv's weight from (g, v) on every call;
    fold it once. (Edits the parametrized classes, which deepcopies share: fold only a model of its own.)"""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def plain_snake(model: torch.nn.Module) -> torch.nn.Module:
    """Snake activations without TorchScript, for torch.compile to fuse. Uncompiled, keep SNAC's own: its
    TorchScript function is fused by the TorchScript fuser on CUDA, and the plain one is 5 kernels."""
    from snac.layers import Snake1d  # type: ignore[import-untyped]

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Snake1d):
                setattr(module, name, _Snake(child.alpha))
    return model


def disable_noise(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces SNAC's NoiseBlocks (fresh torch.randn on every call, even in eval) by identities.

    Only for comparisons: with noise, two decodes of the same codes differ, so streamed vs offline could
    not be checked. Serving keeps the noise: it is part of the trained decoder."""
    from snac.layers import NoiseBlock

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NoiseBlock):
                setattr(module, name, torch.nn.Identity())
    return model


class SnacModel:
    """The SNAC network on its device; `decode_windows` is called from the batcher's worker thread.

    On CUDA, every (window length, batch bucket) pair is captured once in a CUDA graph. An eager SNAC call
    launches ~300 kernels from Python: measured on the H100, that costs 7 ms at batch 1 against 0.7 ms
    replayed (benchmarks/snac_bench.py), and under load the launches fight the engine thread and the event
    loop for the GIL, which made each call take ~90 ms of wall time in the server ramp. A replay is one call.
    A batch is padded up to its bucket (at most 2x at small sizes, where graphs gain most)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, max_batch: int = 64,
                 cuda_graphs: bool = True, compile: bool = False) -> None:  # fmt: skip
        self.model = fold_weight_norm(model.eval().to(device))
        self.device = device
        # torch.compile (CUDA): fused Snake, conv epilogues and code lookups; dynamic, so one compilation
        # serves every window length and batch bucket. Compiled at the first call, i.e. in warm_up.
        compiled = compile and device.type == "cuda"
        if compiled:
            plain_snake(self.model)  # in place
        decode = cast(Callable[[list[torch.Tensor]], torch.Tensor], self.model.decode)  # snac has no types
        self._decode = torch.compile(decode, dynamic=True) if compiled else decode
        # A CUDA stream of its own, so SNAC kernels run alongside the engine's decode steps instead of
        # queueing behind them on the default stream.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # Powers of two only: SNAC batches are small and a graph per size is cheap.
        self.buckets = batch_buckets(max_batch, step=max_batch)
        self.use_graphs = cuda_graphs and device.type == "cuda"
        # Captured on SNAC's stream, after two warm-up calls (compilation, cuDNN/cuBLAS kernel choice).
        self.graphs: GraphSet[tuple[int, int]] = GraphSet(self.stream, warmup_runs=2)  # (frames, bucket)
        self.graph_inputs: dict[tuple[int, int], list[torch.Tensor]] = {}  # static codes per level

    def codes_tensors(self, batch: list[tuple[Frame, ...]]) -> list[torch.Tensor]:
        """Equal-length frame sequences -> SNAC's three code tensors (B, n), (B, 2n), (B, 4n), on the CPU."""
        per_stream = [snac_codes(list(frames)) for frames in batch]
        return [torch.tensor([c[level] for c in per_stream], dtype=torch.long) for level in range(3)]

    @torch.inference_mode()
    def decode_frames(self, batch: list[tuple[Frame, ...]]) -> torch.Tensor:
        """Equal-length frame sequences -> float audio (B, n * 2048) in [-1, 1], on the device."""
        codes = self.codes_tensors(batch)
        n_frames, b = len(batch[0]), len(batch)
        if not self.use_graphs or b > self.buckets[-1]:
            return self._decode([c.to(self.device) for c in codes])[:, 0]
        bucket = bucket_for(self.buckets, b)
        key = (n_frames, bucket)
        if key not in self.graphs:
            self._capture(key)
        for static, c in zip(self.graph_inputs[key], codes, strict=True):
            static[:b].copy_(c, non_blocking=True)
            static[b:].copy_(c[:1].expand(bucket - b, -1), non_blocking=True)  # padding rows: any valid codes
        return self.graphs.replay(key)[:b]

    def _capture(self, key: tuple[int, int]) -> None:
        n_frames, bucket = key
        inputs = [torch.zeros((bucket, n_frames * k), dtype=torch.long, device=self.device) for k in (1, 2, 4)]
        self.graph_inputs[key] = inputs
        self.graphs.capture(key, lambda: self._decode(inputs)[:, 0])

    def decode_windows(self, windows: list[Window]) -> list[bytes]:
        """One model call for windows of one shape -> each window's kept audio as s16le bytes."""
        if len({w.n_frames for w in windows}) != 1:
            raise ValueError("decode_windows needs windows of one shape")
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            audio = self.decode_frames([w.frames for w in windows])
            pcm = to_pcm16(audio).cpu().numpy()  # synchronises this stream only
        return [pcm[i, w.keep_from * SAMPLES_PER_FRAME : w.keep_to * SAMPLES_PER_FRAME].tobytes()
                for i, w in enumerate(windows)]  # fmt: skip

    def warm_up(self) -> None:
        """Every window shape the streams can produce, at every batch bucket (on CUDA: captures the graphs,
        largest first so the smaller ones reuse its memory pool)."""
        if not self.use_graphs:  # eager (CPU): one call pays the first-call costs
            self.decode_windows([Window(((0,) * 7,) * WINDOW_FRAMES, 0, WINDOW_FRAMES)])
            return
        for b in reversed(self.buckets):
            for n in range(1, WINDOW_FRAMES + 1):
                self.decode_windows([Window(((0,) * 7,) * n, 0, n)] * b)


def to_pcm16(audio: torch.Tensor) -> torch.Tensor:
    return (audio.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)


def load_snac(source: str, cfg: RuntimeConfig) -> SnacModel:
    """SNAC from a local directory (config.json + pytorch_model.bin) or a hub repo id."""
    from snac import SNAC  # type: ignore[import-untyped]

    from orpheus_tts.build.hub import HubError, resolve_model

    try:
        path = resolve_model(source, None, cfg.hf_token, allow_patterns=SNAC_FILES, offline=cfg.hf_offline)
    except HubError as e:
        raise SnacLoadError(f"SNAC decoder {source}: {e}") from e
    device = pick_device(cfg.snac_device)
    log.info("loading SNAC from %s on %s", source if not pathlib.Path(source).is_dir() else path, device)
    return SnacModel(SNAC.from_pretrained(str(path)), device, cfg.snac_max_batch, cfg.snac_cuda_graphs,
                     cfg.torch_compile)  # fmt: skip
