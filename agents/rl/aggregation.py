"""Turn a per-token loss matrix into a scalar (verl's `loss_agg_mode` names).

- `token-mean`: every unmasked token in the batch weighs the same (DAPO, the default).
- `seq-mean-token-mean` (alias `seq-mean`): mean over each sequence's tokens, then over sequences (GRPO paper).
- `seq-mean-token-sum-norm`: sum over each sequence's tokens divided by a constant (`norm_length`, the
  generation budget), then mean over sequences (Dr.GRPO: no length bias).
"""

from __future__ import annotations

import torch

from embedkit.errors import EmbedkitError

AGG_MODES = ("token-mean", "seq-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *,
              norm_length: int | None = None, total_tokens: float | None = None,
              total_seqs: float | None = None) -> torch.Tensor:  # fmt: skip
    """Aggregate `values` [B, T] over `mask` [B, T] (1 = counts).

    `total_tokens` / `total_seqs` override the denominators, so the loss of a slice of a batch (one domain
    in MGS, one micro-batch) adds up to the loss of the whole batch.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        denom = mask.sum() if total_tokens is None else torch.as_tensor(total_tokens, dtype=values.dtype)
        return (values * mask).sum() / denom.clamp_min(1.0)
    if mode in ("seq-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_sum = (values * mask).sum(-1)
        if mode == "seq-mean-token-sum":
            per_seq = seq_sum
        elif mode == "seq-mean-token-sum-norm":
            length = norm_length if norm_length is not None else values.shape[-1]
            per_seq = seq_sum / float(length)
        else:
            per_seq = seq_sum / mask.sum(-1).clamp_min(1.0)
        has_tokens = (mask.sum(-1) > 0).to(values.dtype)
        denom = has_tokens.sum() if total_seqs is None else torch.as_tensor(total_seqs, dtype=values.dtype)
        return (per_seq * has_tokens).sum() / denom.clamp_min(1.0)
    raise EmbedkitError(f"unknown loss aggregation '{mode}'; choose one of: {', '.join(AGG_MODES)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries (unbiased variance, as verl/TRL)."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp_min(1.0)
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp_min(1.0)
    return (values - mean) * torch.rsqrt(var + eps)
