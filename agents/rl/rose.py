"""ROSE: semantic-entropy-guided branching rollouts and tree-based segment advantages.

The definitions follow the official ROSE-rl code (its `core_algos.py` tree advantage and the rollout's
`cosine-entropy` branch metric), re-derived here:

Semantic entropy at a position, from the top candidates with their *raw* probabilities p_i (not
renormalised over the candidates) and e_i their L2-normalised input embeddings:
    H = −Σ p_i log p_i,   F = ‖Σ p_i e_i‖² − Σ p_i²,   SE = −F · H.

Branch points. Within one prompt's group, response r has parent π(r) (None = sampled from the root) and
branch position k_r. Its branch-point set S_r starts as {0} ∪ {k of r and of every ancestor}; every child's
k is then added to its parent and further up while it lies on the path (k ≤ the branch position of the
response it is propagated from); finally every child inherits its parent's points below its own k.

Values and advantages. V(k) = mean final reward of the group's responses whose S contains k (a position,
not a tree node: equal positions on different paths share one value, as in the official code). With
P = sorted(S_r ∩ [0, L]) ∪ {L}, the tokens of [k_j, k_{j+1}) get V(k_{j+1}) − V(k_j), where V(L) is the
response's own reward.

Length-aware term (α > 0). Among the correct responses (reward ≠ 0) of a group with at least two, the
shortest one s (first in order on ties) is the reference; for every other correct response b, k_c is the
largest common branch point of S_s and S_b not beyond min(L_b, L_s) (0 if none), and
    factor = 1 − ((L_s − k_c) / (L_b − k_c))^α,
applied as A ← A − |A| · factor on the tokens [k_c, L_b) only, when factor > 0.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def semantic_entropy(logits: torch.Tensor, embeddings: torch.Tensor, top: int = 20) -> torch.Tensor:
    """SE at each position: logits [..., V], input embeddings [V, D] → [...] (raw top-candidate probs)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top_logp, top_ids = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
    return semantic_entropy_from_top(top_logp, top_ids, embeddings)


def semantic_entropy_from_top(top_logp: torch.Tensor, top_ids: torch.Tensor, embeddings: torch.Tensor,
                              extra_logp: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """SE from the top candidates' log-probs and ids [..., K] (what a rollout server returns);
    `extra_logp` [...] adds one more candidate to H only (NaN: none), because the official rollout takes H
    over vLLM's logprob dict, which also holds the sampled token when it is not among the top K."""
    p = top_logp.float().exp()
    h = -(p * top_logp.float()).sum(-1)
    if extra_logp is not None:
        extra = extra_logp.float()
        h = h - torch.where(torch.isnan(extra), torch.zeros_like(extra), extra.exp() * extra)
    e = F.normalize(embeddings.float(), dim=-1)[top_ids]  # [..., top, D]
    mixed = (p.unsqueeze(-1) * e).sum(-2)
    f = (mixed * mixed).sum(-1) - (p * p).sum(-1)
    return -f * h


def choose_branch(se: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], rng: random.Random,
                  epsilon: float = 0.5) -> tuple[int, int] | None:  # fmt: skip
    """Where the next response of a prompt starts: None (the root) with probability ε or when nothing can
    branch, else the first (response, position) with maximal SE among earlier responses, over the positions
    the policy generated; the new response keeps the prefix before that position and resamples it."""
    if not se or rng.random() < epsilon:
        return None
    best: tuple[float, int, int] | None = None
    for r, (values, mask) in enumerate(zip(se, masks, strict=True)):
        for t in range(len(values)):
            if mask[t] and (best is None or float(values[t]) > best[0]):
                best = (float(values[t]), r, t)
    return None if best is None else (best[1], best[2])


def branch_point_sets(parents: Sequence[int | None], branch_positions: Sequence[int]) -> list[set[int]]:
    """Each response's branch-point set S_r within one group (parents are indices within the group)."""
    n = len(parents)
    for r, parent in enumerate(parents):
        if parent is not None and not 0 <= parent < n:
            raise ValueError(f"response {r}: parent {parent} is not a response of its group (0..{n - 1})")
    sets: list[set[int]] = []
    for r in range(n):
        cur: int | None = r
        points, seen = {0}, set()
        while cur is not None and cur not in seen:  # own k and every ancestor's
            seen.add(cur)
            if parents[cur] is not None and branch_positions[cur] >= 0:
                points.add(int(branch_positions[cur]))
            cur = parents[cur]
        sets.append(points)
    for r in range(n):  # a child's branch point belongs to the path it left, and up while on that path
        k, cur = branch_positions[r], parents[r]
        if cur is None or k < 0:
            continue
        seen = set()
        while cur is not None and cur not in seen:
            seen.add(cur)
            sets[cur].add(int(k))
            if parents[cur] is None or not k <= branch_positions[cur]:
                break
            cur = parents[cur]
    for r in range(n):  # children inherit the parent's points before their own branch position
        parent, k = parents[r], branch_positions[r]
        if parent is not None and k >= 0:
            sets[r].update(pos for pos in sets[parent] if pos < k)
    return sets


def group_advantages(rewards: Sequence[float], parents: Sequence[int | None], branch_positions: Sequence[int],
                     lengths: Sequence[int], width: int, length_alpha: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Per-token ROSE advantages [n, width] of one prompt's group (see the module docstring)."""
    n = len(rewards)
    sets = branch_point_sets(parents, branch_positions)
    values: dict[int, float] = {}
    for k in sorted(set().union(*sets)) if sets else []:
        through = [rewards[b] for b in range(n) if k in sets[b]]
        values[k] = sum(through) / len(through)
    adv = torch.zeros(n, width)
    for b in range(n):
        length = int(lengths[b])
        if length <= 0:
            continue
        points = sorted(k for k in sets[b] if k <= length)
        if not points or points[0] != 0:
            points = [0, *points]
        if points[-1] != length:
            points.append(length)
        for k0, k1 in zip(points, points[1:], strict=False):
            if k0 >= length or k1 <= k0:
                continue
            v1 = rewards[b] if k1 == length else values[k1]
            adv[b, k0:k1] = v1 - values[k0]
    if length_alpha > 0:
        correct = [b for b in range(n) if abs(rewards[b]) > 1e-6]
        if len(correct) > 1:
            short = min(correct, key=lambda b: (lengths[b], correct.index(b)))
            l_short = int(lengths[short])
            if l_short > 0:
                for b in correct:
                    l_b = int(lengths[b])
                    if b == short or l_b <= 0:
                        continue
                    common = [k for k in sets[short] & sets[b] if k <= min(l_b, l_short)]
                    k_c = max(common) if common else 0
                    remain_other = max(l_b - k_c, 0)
                    if remain_other <= 0:
                        continue
                    factor = 1.0 - (max(l_short - k_c, 0) / remain_other) ** length_alpha
                    if factor > 0:
                        adv[b, k_c:l_b] -= adv[b, k_c:l_b].abs() * factor
    return adv


def segment_advantages(*, rewards: Sequence[float], group_ids: Sequence[int], parents: Sequence[int | None],
                       branch_positions: Sequence[int], lengths: Sequence[int], width: int,
                       length_alpha: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Per-token ROSE advantages [B, width] of a batch; `parents` index within each response's group."""
    adv = torch.zeros(len(rewards), width)
    ids = list(group_ids)
    for gid in dict.fromkeys(ids):
        rows = [i for i, g in enumerate(ids) if g == gid]
        adv[rows] = group_advantages([rewards[i] for i in rows], [parents[i] for i in rows],
                                     [branch_positions[i] for i in rows], [lengths[i] for i in rows], width,
                                     length_alpha)  # fmt: skip
    return adv
