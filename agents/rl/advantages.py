"""Advantage estimators (registry `ADVANTAGE_ESTIMATORS`): `grpo`, `drgrpo`, `gae` (alias `ppo`), `rose`.

Every estimator takes an `AdvantageInputs` and returns `(advantages [B, T], returns [B, T])`, zero on
masked (prompt padding, tool output) tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agents.rl.aggregation import masked_whiten
from agents.rl.registry import Registry
from embedkit.errors import EmbedkitError


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor  # [B] final (outcome) reward per response
    response_mask: torch.Tensor  # [B, T] 1 on tokens the policy generated (tool tokens are 0)
    group_ids: Sequence[int]  # responses to the same prompt share an id
    values: torch.Tensor | None = None  # [B, T] critic values (gae)
    gamma: float = 1.0
    lam: float = 1.0
    eps: float = 1e-6
    # ROSE: per response, the response of its own group it branched from (index within the group, None =
    # sampled from the root) and where.
    parents: Sequence[int | None] | None = None
    branch_positions: Sequence[int] | None = None
    lengths: Sequence[int] | None = None  # response lengths in tokens (positions in the [B, T] layout)
    length_alpha: float = 0.0  # ROSE length-aware term; 0 disables it (correct = reward != 0)
    token_rewards: torch.Tensor | None = None  # [B, T] gae: per-token rewards instead of `rewards` on the last token
    extras: dict = field(default_factory=dict)


Estimator = Callable[[AdvantageInputs], tuple[torch.Tensor, torch.Tensor]]
ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def group_normalized_scores(rewards: torch.Tensor, group_ids: Sequence[int], *, norm_by_std: bool,
                            eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """r_i − mean(group), divided by (the group's unbiased std + eps) when `norm_by_std`.

    A group with one response gets mean 0 and std 1, as verl's `compute_grpo_outcome_advantage`:
    its score is r / (1 + eps) (r without the std division).
    """
    scores = torch.zeros_like(rewards, dtype=torch.float32)
    ids = list(group_ids)
    for gid in dict.fromkeys(ids):
        idx = torch.tensor([i for i, g in enumerate(ids) if g == gid])
        group = rewards[idx].float()
        if len(idx) < 2:
            scores[idx] = group / (1.0 + eps) if norm_by_std else group
            continue
        centred = group - group.mean()
        scores[idx] = centred / (group.std() + eps) if norm_by_std else centred
    return scores


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: (r − mean_group) / (std_group + eps), broadcast over the response tokens."""
    scores = group_normalized_scores(inputs.rewards, inputs.group_ids, norm_by_std=True, eps=inputs.eps)
    adv = scores.unsqueeze(-1) * inputs.response_mask
    return adv, adv


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def drgrpo(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO: r − mean_group, no std division (pair it with `seq-mean-token-sum-norm`)."""
    scores = group_normalized_scores(inputs.rewards, inputs.group_ids, norm_by_std=False, eps=inputs.eps)
    adv = scores.unsqueeze(-1) * inputs.response_mask
    return adv, adv


def outcome_token_rewards(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put each response's scalar reward on its last policy token."""
    token_rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    positions = torch.arange(response_mask.shape[1]).expand_as(response_mask)
    last = torch.where(response_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values
    rows = (last >= 0).nonzero().squeeze(-1)
    token_rewards[rows, last[rows]] = rewards[rows].float()
    return token_rewards


@ADVANTAGE_ESTIMATORS.register("gae")
@ADVANTAGE_ESTIMATORS.register("ppo")
def gae(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over policy tokens; tool tokens are skipped (their value and TD error do not propagate).

    δ_t = r_t + γ V(next policy token) − V_t;  A_t = δ_t + γλ A_next;  returns = A + V; A is whitened.
    """
    if inputs.values is None:
        raise EmbedkitError("the gae/ppo estimator needs critic values: enable the value head (critic)")
    mask = inputs.response_mask.float()
    values = inputs.values.float() * mask
    token_rewards = (inputs.token_rewards.float() if inputs.token_rewards is not None
                     else outcome_token_rewards(inputs.rewards, inputs.response_mask))  # fmt: skip
    next_value = torch.zeros(mask.shape[0])
    last_gae = torch.zeros(mask.shape[0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(mask.shape[1])):
        delta = token_rewards[:, t] + inputs.gamma * next_value - values[:, t]
        candidate = delta + inputs.gamma * inputs.lam * last_gae
        m = mask[:, t]
        next_value = values[:, t] * m + (1 - m) * next_value
        last_gae = candidate * m + (1 - m) * last_gae
        advantages[:, t] = last_gae
    returns = (advantages + values) * mask
    advantages = masked_whiten(advantages, mask) * mask
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("rose")
def rose(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """ROSE segment-level advantages over the branch tree (see `agents.rl.rose.segment_advantages`)."""
    from agents.rl.rose import segment_advantages

    n = len(inputs.rewards)
    lengths = list(inputs.lengths) if inputs.lengths is not None else inputs.response_mask.sum(-1).int().tolist()
    adv = segment_advantages(
        rewards=inputs.rewards.float().tolist(),
        group_ids=list(inputs.group_ids),
        parents=list(inputs.parents) if inputs.parents is not None else [None] * n,
        branch_positions=list(inputs.branch_positions) if inputs.branch_positions is not None else [0] * n,
        lengths=lengths,
        width=inputs.response_mask.shape[1],
        length_alpha=inputs.length_alpha,
    )
    adv = adv * inputs.response_mask
    return adv, adv
