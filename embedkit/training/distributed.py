"""Rank helpers for torchrun / accelerate runs: one process writes, the others wait at a barrier."""

from __future__ import annotations


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True outside distributed runs, and on rank 0 inside them."""
    import torch.distributed as dist

    return not _initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op outside distributed runs)."""
    import torch.distributed as dist

    if _initialized():
        dist.barrier()
