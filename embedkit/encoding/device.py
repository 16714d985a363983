"""Device and precision selection."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; anything else is passed through."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """`auto` means float16 on CUDA (where it is fast and accurate enough for inference), float32 elsewhere."""
    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]
