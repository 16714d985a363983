"""Token-level policy-gradient pieces: log-probs, PPO-clip surrogate, KL to a reference, value loss.

The PPO pieces follow verl's `compute_policy_loss_vanilla` / `kl_penalty` / `compute_value_loss` (0.9.x):
the log-ratio is clamped to ±20 before `exp`, negative-advantage tokens get the dual-clip bound
`−A · clip_ratio_c` (default 3), the k3 estimator clamps its log-ratio to ±20 and its value to ±10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embedkit.errors import EmbedkitError

LOG_RATIO_CLAMP = 20.0
KL_VALUE_CLAMP = 10.0


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token | prefix) under the sampling distribution softmax(logits / T): [B, T, V], [B, T] → [B, T]."""
    scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
    return torch.gather(F.log_softmax(scaled, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def full_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy of softmax(logits / T) at each position: [B, T, V] → [B, T]."""
    scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
    logp = F.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def chunked_log_probs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0,
                      chunk: int = 1024, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Log-probs (and entropy) of `tokens` from `logits` [N, T, V] in slices of `chunk` positions, so no fp32
    copy of the whole [N, T, V] tensor is ever made (logits may stay bf16). Differentiable."""
    flat = logits.reshape(-1, logits.shape[-1])
    ids = tokens.reshape(-1)
    logps, ents = [], []
    for start in range(0, flat.shape[0], chunk):
        piece = flat[start : start + chunk].float()
        if temperature != 1.0:
            piece = piece / temperature
        logp = F.log_softmax(piece, dim=-1)
        logps.append(torch.gather(logp, -1, ids[start : start + chunk].unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            ents.append(-(logp.exp() * logp).sum(-1))
    out = torch.cat(logps).view(tokens.shape) if logps else flat.new_zeros(tokens.shape, dtype=torch.float32)
    ent = (torch.cat(ents).view(tokens.shape) if ents else None) if with_entropy else None
    return out, ent


@dataclass
class ClipOutput:
    loss: torch.Tensor  # per-token loss [B, T]
    clipped: torch.Tensor  # 1 where the ε-clip bound was active (verl's pg_clipfrac)
    clipped_lower: torch.Tensor  # 1 where the dual-clip bound was active (verl's pg_clipfrac_lower)
    ratio: torch.Tensor  # π / π_old after the log-ratio clamp
    neg_log_ratio: torch.Tensor  # log π_old − log π after the clamp (verl's ppo_kl per token)


def ppo_clip(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, *,
             clip_low: float = 0.2, clip_high: float = 0.2, clip_ratio_c: float = 3.0) -> ClipOutput:  # fmt: skip
    """Dual-clip PPO surrogate per token, as verl's `compute_policy_loss_vanilla` before aggregation."""
    if clip_ratio_c <= 1.0:
        raise EmbedkitError(f"clip_ratio_c must be > 1 (dual-clip PPO), got {clip_ratio_c}")
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clip1 = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_ratio_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(loss3, clip1), clip1)
    return ClipOutput(loss=loss, clipped=(loss2 > loss1).float(),
                      clipped_lower=((clip1 > loss3) & negative).float(), ratio=ratio,
                      neg_log_ratio=-log_ratio)  # fmt: skip


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, *,
                  clip_low: float = 0.2, clip_high: float = 0.2,
                  clip_ratio_c: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-token dual-clip surrogate and the ε-clipped indicator (see `ppo_clip`)."""
    out = ppo_clip(log_probs, old_log_probs, advantages, clip_low=clip_low, clip_high=clip_high,
                   clip_ratio_c=clip_ratio_c)  # fmt: skip
    return out.loss, out.clipped


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate of π against π_ref from sampled tokens (Schulman's estimators, verl's clamps).

    k1 = log π − log π_ref;  k2 = ½(log π − log π_ref)²;
    k3 = exp(d) − d − 1 with d = clamp(log π_ref − log π, ±20), clamped to ±10.
    """
    if kind in ("k1", "kl"):
        return log_probs - ref_log_probs
    if kind in ("k2", "mse"):
        return 0.5 * (log_probs - ref_log_probs).square()
    if kind in ("k3", "low_var_kl"):
        diff = torch.clamp(ref_log_probs - log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(diff) - diff - 1.0, -KL_VALUE_CLAMP, KL_VALUE_CLAMP)
    raise EmbedkitError(f"unknown KL estimator '{kind}'; choose k1, k2 or k3")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float = 0.5) -> torch.Tensor:  # fmt: skip
    """Per-token clipped value loss max((V − R)², (clip(V, V_old ± ε) − R)²); the ½ is applied after
    aggregation, as verl's `compute_value_loss` (default ε = 0.5, verl's `critic.cliprange_value`)."""
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    return torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
