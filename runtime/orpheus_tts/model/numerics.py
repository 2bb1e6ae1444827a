"""How far a variant of the model (a quantised KV cache, FP8 projections) is from the reference model.

Two measures over the same prompts, through the serving code paths (prefill into slots, then one-token
decode steps against the cache):
- teacher-forced: both models are fed the same tokens; the output logits of every step are compared
  (relative L2 error over all steps, largest absolute error, and how often the argmax agrees);
- free-running greedy: each model continues with its own argmax; the fraction of positions where the two
  continuations agree (one early disagreement makes every later position differ, so this is the strict one).

Used by tests/runtime/test_quantized_numerics.py on the tiny random model (CPU) and by
benchmarks/lever_check.py on the 3.3B random model (GPU) before a lever is timed. Random weights: the
logits are nearly flat, so argmax agreement is a harsher test than on a trained model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from orpheus_tts.model.llama import Transformer


@dataclass
class Agreement:
    logits_rel_err: float
    logits_max_abs_err: float
    top1_agreement: float
    greedy_agreement: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _prefill(model: Transformer, prompts: torch.Tensor) -> torch.Tensor:
    n, t = prompts.shape
    slots = torch.arange(n, device=prompts.device)
    lengths = torch.full((n,), t, device=prompts.device)
    return model.prefill(prompts, slots, lengths)


@torch.inference_mode()
def teacher_forced_logits(model: Transformer, prompts: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Logits `[steps + 1, N, rows]` (fp32): after the prompts, then after each of `forced[:, s]`."""
    n, t = prompts.shape
    slots = torch.arange(n, device=prompts.device)
    out = [_prefill(model, prompts).float()]
    for s in range(forced.shape[1]):
        positions = torch.full((n,), t + s, device=prompts.device)
        out.append(model.decode(forced[:, s], slots, positions).float())
    return torch.stack(out)


@torch.inference_mode()
def greedy_tokens(model: Transformer, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """`[N, steps]` argmax row indices, each fed back as the next token (rows = vocabulary ids when the
    output layer computes the whole vocabulary)."""
    n, t = prompts.shape
    slots = torch.arange(n, device=prompts.device)
    tok = _prefill(model, prompts).argmax(-1)
    out = [tok]
    for s in range(steps - 1):
        positions = torch.full((n,), t + s, device=prompts.device)
        tok = model.decode(tok, slots, positions).argmax(-1)
        out.append(tok)
    return torch.stack(out, dim=1)


def compare(ref_logits: torch.Tensor, ref_greedy: torch.Tensor, logits: torch.Tensor,
            greedy: torch.Tensor) -> Agreement:  # fmt: skip
    diff = logits - ref_logits
    return Agreement(
        logits_rel_err=float(diff.norm() / ref_logits.norm()),
        logits_max_abs_err=float(diff.abs().max()),
        top1_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
        greedy_agreement=float((greedy == ref_greedy).float().mean()),
    )


def measure(model: Transformer, prompts: torch.Tensor, forced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (or variant) side of `compare`: teacher-forced logits and greedy tokens."""
    return teacher_forced_logits(model, prompts, forced), greedy_tokens(model, prompts, forced.shape[1])
