"""Policy-loss terms added to (or masking) the policy-gradient loss (registry `POLICY_TERMS`).

- `none`: plain policy gradient.
- `entropy`: bonus −coef · token-mean(H) with H the full-vocabulary entropy.
- `tre_k`: trust-region entropy over the top-K logits, scaled to the full-vocabulary range:
  H = (logsumexp(z_K) − Σ p·z_K) · log|V| / log K with p = softmax(z_K); for K = 1, logsumexp(z) − max z.
- `tre_p`: trust-region entropy over the nucleus inside the top-256 tokens: keep token i (sorted by
  probability) while the cumulative probability before it is < p (the first is always kept); renormalise the
  n kept logits; H · log|V| / log(max(n, 2)); 0 when n = 1.
- `forking`: policy gradient only on the top `rho` (20%) highest-entropy tokens of the batch ("forking tokens").

Loss = pg_loss − coef · token-mean(H) for the entropy-style terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from agents.rl.aggregation import masked_mean
from agents.rl.losses import full_entropy
from agents.rl.registry import Registry


@dataclass
class TermOutput:
    loss: torch.Tensor  # added to the policy-gradient loss
    pg_mask: torch.Tensor | None = None  # replaces the loss mask of the policy-gradient term when set
    metrics: dict[str, float] = field(default_factory=dict)


Term = Callable[..., TermOutput]
POLICY_TERMS: Registry[Term] = Registry("policy-loss term")


def tre_k_entropy(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """TRE-K entropy at each position: logits [..., V] → [...]."""
    logits = logits.float()
    vocab = logits.shape[-1]
    if k <= 1:
        return torch.logsumexp(logits, -1) - logits.max(-1).values
    k = min(k, vocab)
    top = torch.topk(logits, k, dim=-1).values
    p = torch.softmax(top, -1)
    h = torch.logsumexp(top, -1) - (p * top).sum(-1)
    return h * (math.log(vocab) / math.log(k))


def tre_p_entropy(logits: torch.Tensor, p: float = 0.99, top: int = 256) -> torch.Tensor:
    """TRE-P entropy at each position: logits [..., V] → [...]."""
    logits = logits.float()
    vocab = logits.shape[-1]
    kth = min(top, vocab)
    top_logits = torch.topk(logits, kth, dim=-1).values  # sorted, highest first
    probs = torch.softmax(logits, -1)
    top_probs = torch.topk(probs, kth, dim=-1).values
    before = torch.cumsum(top_probs, -1) - top_probs  # cumulative probability before token i
    keep = before < p
    keep[..., 0] = True
    masked = top_logits.masked_fill(~keep, float("-inf"))
    q = torch.softmax(masked, -1)
    h = torch.logsumexp(masked, -1) - torch.where(keep, q * top_logits, torch.zeros_like(q)).sum(-1)
    n = keep.sum(-1)
    scale = math.log(vocab) / torch.log(torch.clamp(n, min=2).float())
    return torch.where(n > 1, h * scale, torch.zeros_like(h))


@POLICY_TERMS.register("none")
def no_term(logits: torch.Tensor, mask: torch.Tensor, **_: object) -> TermOutput:
    return TermOutput(loss=logits.new_zeros(()))


@POLICY_TERMS.register("entropy")
def entropy_bonus(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, **_: object) -> TermOutput:
    h = masked_mean(full_entropy(logits), mask)
    return TermOutput(loss=-coef * h, metrics={"bonus_entropy": float(h.detach())})


@POLICY_TERMS.register("tre_k")
def tre_k(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, k: int = 2, **_: object) -> TermOutput:
    h = masked_mean(tre_k_entropy(logits, k), mask)
    return TermOutput(loss=-coef * h, metrics={"tre_entropy": float(h.detach())})


@POLICY_TERMS.register("tre_p")
def tre_p(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, p: float = 0.99,
          top: int = 256, **_: object) -> TermOutput:  # fmt: skip
    h = masked_mean(tre_p_entropy(logits, p, top), mask)
    return TermOutput(loss=-coef * h, metrics={"tre_entropy": float(h.detach())})


def forking_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float = 0.2) -> torch.Tensor:
    """1 on the unmasked tokens whose entropy is in the top `rho` fraction of the batch (ties kept)."""
    valid = entropy[mask.bool()]
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    keep = max(1, math.ceil(rho * valid.numel()))
    threshold = torch.topk(valid, keep).values.min()
    return ((entropy >= threshold) & mask.bool()).to(mask.dtype)


@POLICY_TERMS.register("forking")
def forking(logits: torch.Tensor, mask: torch.Tensor, *, rho: float = 0.2, **_: object) -> TermOutput:
    with torch.no_grad():
        pg_mask = forking_mask(full_entropy(logits), mask, rho)
    return TermOutput(loss=logits.new_zeros(()), pg_mask=pg_mask,
                      metrics={"forking_fraction": float(pg_mask.sum() / mask.sum().clamp_min(1))})  # fmt: skip
