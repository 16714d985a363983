"""Token-level policy-gradient pieces: log-probs, PPO-clip surrogate, KL to a reference, value loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedkit.errors import EmbedkitError


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token | prefix) for each position: logits [B, T, V], tokens [B, T] → [B, T]."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the full softmax at each position: [B, T, V] → [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, *,
                  clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-token clipped surrogate max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)) and the clipped indicator."""
    ratio = torch.exp(log_probs - old_log_probs)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = (loss_clipped > loss_unclipped).float()
    return torch.maximum(loss_unclipped, loss_clipped), clipped


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate of π against π_ref from sampled tokens (Schulman's estimators).

    k1 = log π − log π_ref;  k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (non-negative, unbiased).
    """
    if kind in ("k1", "kl"):
        return log_probs - ref_log_probs
    if kind in ("k3", "low_var_kl"):
        diff = ref_log_probs - log_probs
        return torch.exp(diff) - diff - 1.0
    raise EmbedkitError(f"unknown KL estimator '{kind}'; choose k1 or k3")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:  # fmt: skip
    """Per-token clipped value loss 0.5·max((V − R)², (clip(V, V_old ± ε) − R)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
