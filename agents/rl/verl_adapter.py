"""Plug embedkit's RL pieces into verl (multi-node training) through verl's own registries.

    from agents.rl.verl_adapter import register_with_verl
    register_with_verl()   # then in the verl config:
    #   algorithm.adv_estimator=embedkit_grpo | embedkit_drgrpo | embedkit_rose
    #   actor_rollout_ref.actor.policy_loss.loss_mode=embedkit_ppo_clip | embedkit_forking
    install_tre_entropy("tre_k", k=2)   # verl's entropy bonus (actor.entropy_coeff) becomes TRE-K

Registration uses `verl.trainer.ppo.core_algos.register_adv_est` and `register_policy_loss`; call it in
every process that builds the trainer or actor workers (e.g. at the top of your verl entry script and in a
Ray `runtime_env` worker setup hook). The functions below follow verl's calling conventions and work on
plain tensors, so they are tested without verl installed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from agents.rl.advantages import AdvantageInputs, drgrpo, grpo
from agents.rl.aggregation import aggregate
from agents.rl.losses import full_entropy, ppo_clip_loss
from agents.rl.regularizers import forking_mask, tre_k_entropy, tre_p_entropy
from agents.rl.rose import segment_advantages

ADV_ESTIMATORS = ("embedkit_grpo", "embedkit_drgrpo", "embedkit_rose")
_VERL_AGG: Any = None  # set by register_with_verl: verl's agg_loss, which knows the global batch size
POLICY_LOSSES = ("embedkit_ppo_clip", "embedkit_forking")


def _config_get(config: Any, key: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "get", None)
    if callable(getter):
        try:
            value = getter(key, default)
            return default if value is None else value
        except TypeError:
            pass
    value = getattr(config, key, default)
    return default if value is None else value


def _group_ids(index: Sequence[Any]) -> list[int]:
    mapping: dict[Any, int] = {}
    return [mapping.setdefault(str(i), len(mapping)) for i in list(index)]


def verl_grpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Any],
                        epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True, config: Any = None,
                        **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """verl signature → embedkit GRPO (groups of one get advantage 0)."""
    inputs = AdvantageInputs(rewards=token_level_rewards.sum(-1), response_mask=response_mask,
                             group_ids=_group_ids(index), eps=epsilon)  # fmt: skip
    adv, ret = (grpo if norm_adv_by_std_in_grpo else drgrpo)(inputs)
    return adv.to(token_level_rewards.dtype), ret.to(token_level_rewards.dtype)


def verl_drgrpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Any],
                          epsilon: float = 1e-6, config: Any = None, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return verl_grpo_advantage(token_level_rewards, response_mask, index, epsilon, False, config)


def verl_rose_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Any],
                        config: Any = None, rose_parents: Sequence[int] | None = None,
                        rose_branch_positions: Sequence[int] | None = None, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """ROSE segment advantages; parents are batch-local indices within each group (−1 = root) passed through
    the batch's non-tensor fields `rose_parents` / `rose_branch_positions`; without them every response is
    a root sample (centred reward)."""
    n = token_level_rewards.shape[0]
    groups = _group_ids(index)
    parents: list[int | None] = [None] * n
    if rose_parents is not None:
        parents = [None if int(p) < 0 else int(p) for p in rose_parents]
    positions = [int(k) for k in rose_branch_positions] if rose_branch_positions is not None else [0] * n
    adv = segment_advantages(rewards=token_level_rewards.sum(-1).tolist(), group_ids=groups, parents=parents,
                             branch_positions=positions, lengths=response_mask.sum(-1).int().tolist(),
                             width=response_mask.shape[1],
                             length_alpha=float(_config_get(config, "rose_length_alpha", 0.0)))  # fmt: skip
    adv = adv.to(token_level_rewards.dtype) * response_mask
    return adv, adv


def verl_ppo_clip_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                       rollout_log_probs: torch.Tensor | None = None, *, mask_override: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """Clipped surrogate with verl's clip_ratio(_low/_high) and aggregation modes."""
    clip = float(_config_get(config, "clip_ratio", 0.2))
    low = float(_config_get(config, "clip_ratio_low", clip))
    high = float(_config_get(config, "clip_ratio_high", clip))
    mask = response_mask if mask_override is None else mask_override
    loss_tok, clipped = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_low=low, clip_high=high)
    if _VERL_AGG is not None:  # data-parallel aware normalisation (dp size, global token count)
        loss = _VERL_AGG(loss_tok, mask, loss_agg_mode, config)
    else:
        loss = aggregate(loss_tok, mask, loss_agg_mode)
    kl = aggregate(old_log_prob - log_prob, response_mask, "token-mean")
    metrics = {"actor/pg_clipfrac": float(aggregate(clipped, response_mask, "token-mean")),
               "actor/ppo_kl": float(kl.detach())}  # fmt: skip
    return loss, metrics


def verl_forking_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                      response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                      rollout_log_probs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                      **_: Any) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """PPO-clip on the top 20% highest-entropy tokens; without `entropy`, −log π of the sampled token stands
    in for it (verl does not hand logits to policy losses)."""
    score = entropy if entropy is not None else -log_prob.detach()
    rho = float(_config_get(config, "forking_rho", 0.2))
    mask = forking_mask(score, response_mask, rho)
    return verl_ppo_clip_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                              rollout_log_probs, mask_override=mask)  # fmt: skip


def probe_config() -> Any:
    """A minimal actor config verl's own losses accept (clip ratios, no global batch info)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
                             "global_batch_info": {}})  # fmt: skip


def _adapt_return_arity(fn: Any, reference: Any) -> Any:
    """Older verl policy losses return (loss, clipfrac, ppo_kl, clipfrac_lower); newer ones (loss, metrics)."""
    probe = torch.zeros(1, 2)
    try:
        out = reference(probe, probe, probe, torch.ones(1, 2), "token-mean", probe_config())
    except Exception:  # noqa: BLE001 - the newest signature is the safest default
        return fn
    if isinstance(out, tuple) and len(out) == 4:

        @functools.wraps(fn)
        def legacy(*args: Any, **kwargs: Any):
            loss, metrics = fn(*args, **kwargs)
            zero = torch.zeros((), device=loss.device)
            return (loss, torch.tensor(metrics["actor/pg_clipfrac"]), torch.tensor(metrics["actor/ppo_kl"]), zero)

        return legacy
    return fn


def register_with_verl() -> list[str]:
    """Register embedkit's estimators and losses in verl's registries; returns the names registered.

    Raises ImportError when verl is not installed (install the `verl` extra)."""
    from verl.trainer.ppo import core_algos

    global _VERL_AGG
    if hasattr(core_algos, "agg_loss"):

        def verl_agg(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, config: Any) -> torch.Tensor:
            info = _config_get(config, "global_batch_info", None) or {}
            return core_algos.agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode, **dict(info))

        _VERL_AGG = verl_agg
    registered = []
    for name, fn in (("embedkit_grpo", verl_grpo_advantage), ("embedkit_drgrpo", verl_drgrpo_advantage),
                     ("embedkit_rose", verl_rose_advantage)):  # fmt: skip
        if core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            core_algos.register_adv_est(name)(fn)
        registered.append(name)
    reference = core_algos.get_policy_loss_fn("vanilla")
    for name, fn in (("embedkit_ppo_clip", verl_ppo_clip_loss), ("embedkit_forking", verl_forking_loss)):
        core_algos.register_policy_loss(name)(_adapt_return_arity(fn, reference))
        registered.append(name)
    return registered


def tre_entropy_from_logits(logits: torch.Tensor, kind: str = "tre_k", k: int = 2, p: float = 0.99) -> torch.Tensor:
    """Drop-in for verl's `entropy_from_logits`: TRE-K / TRE-P / full entropy per position."""
    if kind == "tre_k":
        return tre_k_entropy(logits, k)
    if kind == "tre_p":
        return tre_p_entropy(logits, p)
    return full_entropy(logits)


def install_tre_entropy(kind: str = "tre_k", k: int = 2, p: float = 0.99) -> None:
    """Make verl's entropy bonus (actor.entropy_coeff) trust-region entropy; call before building actors."""
    import verl.utils.torch_functional as verl_F

    verl_F.entropy_from_logits = functools.partial(tre_entropy_from_logits, kind=kind, k=k, p=p)
