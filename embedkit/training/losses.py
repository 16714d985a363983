"""Registry of contrastive losses from sentence-transformers, picked by name in the training config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedkit.registry import Registry

LossFactory = Callable[[Any, Any], Any]  # (SentenceTransformer, TrainConfig) -> loss module
LOSSES: Registry[LossFactory] = Registry("loss")


def register_loss(*names: str) -> Callable[[LossFactory], LossFactory]:
    """Register a loss factory under one or more names (aliases)."""

    def decorator(factory: LossFactory) -> LossFactory:
        for name in names:
            LOSSES.add(name, factory)
        return factory

    return decorator


@register_loss("mnrl", "MultipleNegativesRankingLoss")
def _mnrl(model, config):
    """InfoNCE over in-batch and hard negatives (every extra column is a hard negative)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=config.loss_scale, gather_across_devices=_gather(config))


@register_loss("cached_mnrl", "CachedMultipleNegativesRankingLoss", "gradcache")
def _cached_mnrl(model, config):
    """The same loss with GradCache: large batches in `mini_batch_size` chunks of activation memory, so
    the in-batch negatives grow with the batch instead of being limited by memory."""
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    return CachedMultipleNegativesRankingLoss(model, scale=config.loss_scale, mini_batch_size=config.mini_batch_size,
                                              gather_across_devices=_gather(config))


def _gather(config) -> bool:
    """Gather in-batch negatives across processes only in a distributed run (the training arguments
    have set the process group up by the time the loss is built)."""
    import torch.distributed as dist

    return bool(config.gather_across_devices) and dist.is_available() and dist.is_initialized()


def build_loss(model, config):
    """The loss module named by `config.loss` (unknown names list the registered ones)."""
    return LOSSES.get(config.loss)(model, config)
