"""Gradient surgery across task domains (registry `GRADIENT_SURGERY`): `none`, `pcgrad`, `mgs`.

Each takes `grads: dict[domain, list[Tensor | None]]` (one gradient per parameter, same order for every
domain) and returns the combined list of gradients to step with.

- `none`: plain sum.
- `pcgrad` (global PCGrad): flatten every domain's whole gradient; for each domain i (random order) and each
  other domain j (shuffled), if ⟨g_i, g_j⟩ < 0 project g_i ← g_i − ⟨g_i, g_j⟩/‖g_j‖² · g_j against the
  ORIGINAL g_j; sum.
- `mgs` (modular gradient surgery): the same projection, but for every parameter tensor separately, so a
  conflict in one module does not distort the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from agents.rl.registry import Registry

Grads = list[torch.Tensor | None]
Dot = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Surgery = Callable[..., Grads]
GRADIENT_SURGERY: Registry[Surgery] = Registry("gradient surgery")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a.flatten().double(), b.flatten().double())


def project_conflicts(vectors: Sequence[torch.Tensor], rng: random.Random, dot: Dot | None = None) -> list[torch.Tensor]:
    """PCGrad projection of each vector against the original others; returns the projected vectors.

    Domains i are visited in random order; for each, the other domains j in a freshly shuffled order. `dot`
    replaces the plain dot product (e.g. one that sums over the shards of FSDP-sharded gradients).
    """
    dot = dot or _dot
    originals = [v.detach().clone() for v in vectors]
    projected = [v.clone() for v in originals]
    order = list(range(len(originals)))
    rng.shuffle(order)
    for i in order:
        others = [j for j in range(len(originals)) if j != i]
        rng.shuffle(others)
        g_i = projected[i]
        for j in others:
            g_j = originals[j]
            conflict = dot(g_i, g_j)
            norm_sq = dot(g_j, g_j)
            if conflict < 0 and norm_sq > 0:
                g_i = g_i - (conflict / norm_sq).to(g_i.dtype) * g_j
        projected[i] = g_i
    return projected


def _domain_tensors(grads: dict[object, Grads], index: int, like: torch.Tensor) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for g in grads.values():
        grad = g[index]
        out.append(grad if grad is not None else torch.zeros_like(like))
    return out


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return grad if grad is not None else torch.zeros_like(like)


def _reference(grads: dict[object, Grads], index: int) -> torch.Tensor | None:
    for g in grads.values():
        if g[index] is not None:
            return g[index]
    return None


@GRADIENT_SURGERY.register("none")
def no_surgery(grads: dict[object, Grads], rng: random.Random | None = None, dot: Dot | None = None) -> Grads:
    n_params = len(next(iter(grads.values())))
    out: Grads = []
    for p in range(n_params):
        ref = _reference(grads, p)
        out.append(None if ref is None else torch.stack(_domain_tensors(grads, p, ref)).sum(0))
    return out


@GRADIENT_SURGERY.register("mgs")
def mgs(grads: dict[object, Grads], rng: random.Random | None = None, dot: Dot | None = None) -> Grads:
    """Per-parameter-tensor projection, then the sum over domains."""
    rng = rng or random.Random()
    n_params = len(next(iter(grads.values())))
    out: Grads = []
    for p in range(n_params):
        ref = _reference(grads, p)
        if ref is None:
            out.append(None)
            continue
        projected = project_conflicts(_domain_tensors(grads, p, ref), rng, dot)
        out.append(torch.stack(projected).sum(0))
    return out


@GRADIENT_SURGERY.register("pcgrad")
def pcgrad(grads: dict[object, Grads], rng: random.Random | None = None, dot: Dot | None = None) -> Grads:
    """Projection of the flattened whole-model gradients, then the sum over domains."""
    rng = rng or random.Random()
    n_params = len(next(iter(grads.values())))
    found = [_reference(grads, p) for p in range(n_params)]
    refs = {p: ref for p, ref in enumerate(found) if ref is not None}
    live = sorted(refs)
    flats = []
    for domain_grads in grads.values():
        parts = [_or_zeros(domain_grads[p], refs[p]).flatten() for p in live]
        flats.append(torch.cat(parts))
    combined = torch.stack(project_conflicts(flats, rng, dot)).sum(0)
    out: Grads = [None] * n_params
    offset = 0
    for p in live:
        size = refs[p].numel()
        out[p] = combined[offset : offset + size].view_as(refs[p])
        offset += size
    return out
