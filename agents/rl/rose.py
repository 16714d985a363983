"""ROSE: semantic-entropy-guided branching rollouts and segment-level advantages.

Semantic entropy at a position, from the top-20 candidate tokens (p renormalised over them, e_i their
L2-normalised input embeddings):  H = −Σ p_i log p_i,  F = ‖Σ p_i e_i‖² − Σ p_i²,  SE = −F · H.

Segment advantages: branch points 0 < k_1 < … < k_m on a response's path (where another response of the same
prompt leaves it). V(k) = mean final reward of the same-prompt responses through node k (V(0) = group mean).
Tokens in [k_j, k_{j+1}) get V(k_{j+1}) − V(k_j); the last segment [k_m, L) gets r − V(k_m).
Optional length-aware term for correct responses longer than the shortest correct one of the group:
A ← A − |A| · (1 − ((L_short − k_c) / (L − k_c))^α), with k_c the start of the token's segment
(the ratio is clipped to [0, 1]; α = 0 turns the term off).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def semantic_entropy(logits: torch.Tensor, embeddings: torch.Tensor, top: int = 20) -> torch.Tensor:
    """SE at each position: logits [..., V], input embeddings [V, D] → [...]."""
    logits = logits.float()
    top_logits, top_ids = torch.topk(logits, min(top, logits.shape[-1]), dim=-1)
    p = torch.softmax(top_logits, -1)
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    e = F.normalize(embeddings.float(), dim=-1)[top_ids]  # [..., top, D]
    mixed = (p.unsqueeze(-1) * e).sum(-2)
    f = (mixed * mixed).sum(-1) - (p * p).sum(-1)
    return -f * h


def choose_branch(se: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], rng: random.Random,
                  epsilon: float = 0.5) -> tuple[int, int] | None:  # fmt: skip
    """Where the next response of a prompt starts: None (the root) with probability ε or when nothing can
    branch, else the (response, position) with maximal SE among earlier responses (positions 1..L−1 that
    the policy generated)."""
    if not se or rng.random() < epsilon:
        return None
    best: tuple[float, int, int] | None = None
    for r, (values, mask) in enumerate(zip(se, masks, strict=True)):
        for t in range(1, len(values)):
            if mask[t] and (best is None or float(values[t]) > best[0]):
                best = (float(values[t]), r, t)
    return None if best is None else (best[1], best[2])


def owners(parents: Sequence[int | None], branch_positions: Sequence[int], lengths: Sequence[int]) -> list[list[int]]:
    """For every response, which response sampled each of its tokens (a prefix copied from the parent keeps
    the parent's owners). Parents must come before their children."""
    result: list[list[int]] = []
    for i, (parent, k) in enumerate(zip(parents, branch_positions, strict=True)):
        if parent is None:
            result.append([i] * lengths[i])
        else:
            if parent >= i:
                raise ValueError("a ROSE response must branch from an earlier response")
            result.append(result[parent][:k] + [i] * (lengths[i] - k))
    return result


def tree_prefix(a: list[int], b: list[int]) -> int:
    """Length of the shared tree path of two responses (the node where they part)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def segment_advantages(*, rewards: Sequence[float], group_ids: Sequence[int], parents: Sequence[int | None],
                       branch_positions: Sequence[int], lengths: Sequence[int], width: int,
                       length_alpha: float = 0.0, correct_threshold: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Per-token ROSE advantages [B, width] (see the module docstring)."""
    own = owners(parents, branch_positions, lengths)
    adv = torch.zeros(len(rewards), width)
    ids = list(group_ids)
    for i in range(len(rewards)):
        members = [j for j, g in enumerate(ids) if g == ids[i]]
        shared = {j: (tree_prefix(own[i], own[j]) if j != i else lengths[i]) for j in members}
        points = sorted({s for j, s in shared.items() if j != i and 0 < s < lengths[i]})

        def value(k: int, shared: dict[int, int] = shared) -> float:
            through = [rewards[j] for j, s in shared.items() if s >= k]
            return sum(through) / len(through)

        bounds = [0, *points]
        correct = [j for j in members if rewards[j] >= correct_threshold]
        short = min((lengths[j] for j in correct), default=None)
        for seg, start in enumerate(bounds):
            end = bounds[seg + 1] if seg + 1 < len(bounds) else lengths[i]
            a = (value(end) if seg + 1 < len(bounds) else rewards[i]) - value(start)
            if (length_alpha > 0 and short is not None and rewards[i] >= correct_threshold
                    and lengths[i] > short):  # fmt: skip
                ratio = (short - start) / (lengths[i] - start)
                ratio = min(max(ratio, 0.0), 1.0)
                a = a - abs(a) * (1.0 - ratio**length_alpha)
            adv[i, start:end] = a
    return adv
