"""Policy-loss terms added to (or masking) the policy-gradient loss (registry `POLICY_TERMS`).

- `none`: plain policy gradient.
- `entropy`: bonus −coef · H with H the full-vocabulary entropy.
- `tre_k`: trust-region entropy over the top-K logits, scaled to the full-vocabulary range:
  H = (logsumexp(z_K) − Σ p·z_K) · log|V| / log K with p = softmax(z_K); for K = 1, logsumexp(z) − max z.
- `tre_p`: trust-region entropy over the nucleus inside the top-256 tokens: keep token i (sorted by
  probability) while the cumulative probability before it is < p (the first is always kept); renormalise the
  n kept logits; H · log|V| / log(max(n, 2)); 0 when n = 1.
- `forking`: policy gradient only on the top `rho` (20%) highest-entropy tokens of the batch ("forking tokens").

Every entropy is that of the sampling distribution softmax(logits / T) (the trainer passes the rollout
temperature, as verl's actor divides its logits by it before the entropy), and the per-token entropies are
aggregated with the policy loss's `loss_agg_mode` (the trainer passes `reduce`; as verl's `ppo_loss`
aggregates its entropy bonus). Loss = pg_loss − coef · reduce(H, mask) for the entropy-style terms.

No function here makes an fp32 copy of the whole [N, T, V] logits: TRE-K upcasts only the top-K logits,
TRE-P only the top-256 (its nucleus test needs the log-normaliser, computed slice by slice without
gradient), and the full entropy runs slice by slice (`agents.rl.losses.map_positions`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from agents.rl.aggregation import masked_mean
from agents.rl.losses import full_entropy, map_positions
from agents.rl.registry import Registry

Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (per-token values, mask) -> scalar


@dataclass
class TermOutput:
    loss: torch.Tensor  # added to the policy-gradient loss
    pg_mask: torch.Tensor | None = None  # replaces the loss mask of the policy-gradient term when set
    metrics: dict[str, float] = field(default_factory=dict)


Term = Callable[..., TermOutput]
POLICY_TERMS: Registry[Term] = Registry("policy-loss term")


def _top_logits(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """The k largest logits per position, highest first, in fp32 and divided by T (T > 0 keeps the order, so
    only these k values are upcast)."""
    top = torch.topk(logits, k, dim=-1).values.float()
    return top / temperature if temperature != 1.0 else top


def tre_k_entropy(logits: torch.Tensor, k: int = 2, *, temperature: float = 1.0,
                  chunk: int = 1024) -> torch.Tensor:  # fmt: skip
    """TRE-K entropy of softmax(logits / T) at each position: logits [..., V] → [...]."""
    vocab = logits.shape[-1]
    if k <= 1:
        return map_positions(lambda z: torch.logsumexp(z, -1) - z.max(-1).values, logits, temperature=temperature,
                             chunk=chunk)  # fmt: skip
    k = min(k, vocab)
    top = _top_logits(logits, k, temperature)
    p = torch.softmax(top, -1)
    h = torch.logsumexp(top, -1) - (p * top).sum(-1)
    return h * (math.log(vocab) / math.log(k))


def tre_p_entropy(logits: torch.Tensor, p: float = 0.99, top: int = 256, *, temperature: float = 1.0,
                  chunk: int = 1024) -> torch.Tensor:  # fmt: skip
    """TRE-P entropy of softmax(logits / T) at each position: logits [..., V] → [...]."""
    vocab = logits.shape[-1]
    top_logits = _top_logits(logits, min(top, vocab), temperature)  # sorted, highest first
    with torch.no_grad():  # which tokens are kept is a selection: no gradient flows through it
        log_norm = map_positions(lambda z: torch.logsumexp(z, -1), logits.detach(), temperature=temperature,
                                 chunk=chunk)  # fmt: skip
        top_probs = torch.exp(top_logits.detach() - log_norm.unsqueeze(-1))
        keep = torch.cumsum(top_probs, -1) - top_probs < p  # cumulative probability before token i
        keep[..., 0] = True
    masked = top_logits.masked_fill(~keep, float("-inf"))
    q = torch.softmax(masked, -1)
    h = torch.logsumexp(masked, -1) - torch.where(keep, q * top_logits, torch.zeros_like(q)).sum(-1)
    n = keep.sum(-1)
    scale = math.log(vocab) / torch.log(torch.clamp(n, min=2).float())
    return torch.where(n > 1, h * scale, torch.zeros_like(h))


def _bonus(h: torch.Tensor, mask: torch.Tensor, coef: float, reduce: Reduce | None,
           metric: str) -> TermOutput:  # fmt: skip
    value = (reduce or masked_mean)(h, mask)
    return TermOutput(loss=-coef * value, metrics={metric: float(value.detach())})


@POLICY_TERMS.register("none")
def no_term(logits: torch.Tensor, mask: torch.Tensor, **_: object) -> TermOutput:
    return TermOutput(loss=logits.new_zeros((), dtype=torch.float32))


@POLICY_TERMS.register("entropy")
def entropy_bonus(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, temperature: float = 1.0,
                  chunk: int = 1024, reduce: Reduce | None = None, **_: object) -> TermOutput:  # fmt: skip
    return _bonus(full_entropy(logits, temperature, chunk=chunk), mask, coef, reduce, "bonus_entropy")


@POLICY_TERMS.register("tre_k")
def tre_k(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, k: int = 2, temperature: float = 1.0,
          chunk: int = 1024, reduce: Reduce | None = None, **_: object) -> TermOutput:  # fmt: skip
    h = tre_k_entropy(logits, k, temperature=temperature, chunk=chunk)
    return _bonus(h, mask, coef, reduce, "tre_entropy")


@POLICY_TERMS.register("tre_p")
def tre_p(logits: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.001, p: float = 0.99, top: int = 256,
          temperature: float = 1.0, chunk: int = 1024, reduce: Reduce | None = None,
          **_: object) -> TermOutput:  # fmt: skip
    h = tre_p_entropy(logits, p, top, temperature=temperature, chunk=chunk)
    return _bonus(h, mask, coef, reduce, "tre_entropy")


def forking_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float = 0.2) -> torch.Tensor:
    """1 on the unmasked tokens whose entropy is in the top `rho` fraction of the batch (ties kept)."""
    valid = entropy[mask.bool()]
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    keep = max(1, math.ceil(rho * valid.numel()))
    threshold = torch.topk(valid, keep).values.min()
    return ((entropy >= threshold) & mask.bool()).to(mask.dtype)


@POLICY_TERMS.register("forking")
def forking(logits: torch.Tensor, mask: torch.Tensor, *, rho: float = 0.2, temperature: float = 1.0,
            chunk: int = 1024, reduce: Reduce | None = None, **_: object) -> TermOutput:  # fmt: skip
    with torch.no_grad():
        pg_mask = forking_mask(full_entropy(logits, temperature, chunk=chunk), mask, rho)
    fraction = (reduce or masked_mean)(pg_mask, mask)
    return TermOutput(loss=logits.new_zeros((), dtype=torch.float32), pg_mask=pg_mask,
                      metrics={"forking_fraction": float(fraction)})  # fmt: skip
