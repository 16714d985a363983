"""Token-level policy-gradient pieces: log-probs, PPO-clip surrogate, KL to a reference, value loss.

The PPO pieces follow verl's `compute_policy_loss_vanilla` / `kl_penalty` / `compute_value_loss` (0.9.x):
the log-ratio is clamped to ±20 before `exp`, negative-advantage tokens get the dual-clip bound
`−A · clip_ratio_c` (default 3), the k3 estimator clamps its log-ratio to ±20 and its value to ±10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from embedkit.errors import EmbedkitError

LOG_RATIO_CLAMP = 20.0
KL_VALUE_CLAMP = 10.0


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token | prefix) under the sampling distribution softmax(logits / T): [B, T, V], [B, T] → [B, T]."""
    scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
    return torch.gather(F.log_softmax(scaled, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def map_positions(fn: Callable[..., torch.Tensor], logits: torch.Tensor, *aligned: torch.Tensor,
                  temperature: float = 1.0, chunk: int = 1024) -> torch.Tensor:  # fmt: skip
    """`fn(z, *aligned_slices)` over slices of `chunk` positions of `logits` [..., V], with z the slice in fp32
    divided by `temperature`; `aligned` tensors have the logits' leading shape and are sliced alongside.
    Returns the slices' results concatenated, with the logits' leading shape in front.

    Only one slice is ever upcast, and under autograd each slice is recomputed in the backward pass
    (activation checkpointing), so neither the forward nor the tensors saved for backward hold an fp32 copy
    of the whole [..., V] tensor: the logits may stay bf16."""
    if chunk < 1:
        raise EmbedkitError(f"the slice size (trainer.logprob_chunk) must be >= 1 position, got {chunk}")
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    flat_aligned = [a.reshape(-1, *a.shape[len(lead) :]) for a in aligned]

    def on_slice(piece: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        z = piece.float()
        return fn(z / temperature if temperature != 1.0 else z, *extra)

    outs = []
    for start in range(0, flat.shape[0], chunk):
        piece = flat[start : start + chunk]
        extra = [a[start : start + chunk] for a in flat_aligned]
        if torch.is_grad_enabled() and piece.requires_grad:
            outs.append(checkpoint(on_slice, piece, *extra, use_reentrant=False))
        else:
            outs.append(on_slice(piece, *extra))
    if not outs:  # no positions: fn's output shape per position is unknown, a scalar per position is the rule
        return flat.new_zeros(lead, dtype=torch.float32)
    out = torch.cat(outs)
    return out.reshape((*lead, *out.shape[1:]))


def shannon_entropy(z: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(z) along the last dimension."""
    logp = F.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def full_entropy(logits: torch.Tensor, temperature: float = 1.0, *, chunk: int = 1024) -> torch.Tensor:
    """Shannon entropy of softmax(logits / T) at each position: [..., V] → [...] (in slices, see `map_positions`)."""
    return map_positions(shannon_entropy, logits, temperature=temperature, chunk=chunk)


def chunked_log_probs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0,
                      chunk: int = 1024, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Log-probs (and entropy) of `tokens` from `logits` [N, T, V] under softmax(logits / T), in slices of
    `chunk` positions (`map_positions`: no fp32 copy of the whole [N, T, V] tensor). Differentiable."""

    def on_slice(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(z, dim=-1)
        picked = torch.gather(logp, -1, ids.unsqueeze(-1)).squeeze(-1)
        if not with_entropy:
            return picked
        return torch.stack([picked, -(logp.exp() * logp).sum(-1)], -1)

    if tokens.numel() == 0:
        empty = logits.new_zeros(tokens.shape, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    out = map_positions(on_slice, logits, tokens, temperature=temperature, chunk=chunk)
    if not with_entropy:
        return out, None
    return out[..., 0], out[..., 1]


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
