"""Where the engine and SNAC run: one reading of the `device` settings for both."""

from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    """ "auto" means the current CUDA GPU when one is visible, else the CPU. CUDA devices always carry an
    index: torch.cuda.set_device (called from worker threads) refuses a plain "cuda"."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
