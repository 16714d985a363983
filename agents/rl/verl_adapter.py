"""Plug embedkit's RL pieces into verl (>= 0.9.1, < 0.10) through verl's own registries.

    from agents.rl.verl_adapter import register_with_verl, install_tre_entropy
    register_with_verl()   # then in the verl config:
    #   algorithm.adv_estimator=embedkit_grpo | embedkit_drgrpo | embedkit_gae
    #   actor_rollout_ref.actor.policy_loss.loss_mode=embedkit_ppo_clip
    install_tre_entropy("tre_k", k=2)   # verl's entropy bonus (actor.entropy_coeff) becomes TRE-K

What runs where:

| algorithm                      | embedkit trainer | verl                                            |
|--------------------------------|------------------|-------------------------------------------------|
| GRPO, Dr.GRPO, GAE/PPO         | yes              | `embedkit_grpo`, `embedkit_drgrpo`, `embedkit_gae` |
| PPO-clip (dual-clip) loss      | yes              | `embedkit_ppo_clip`                             |
| TRE-K / TRE-P entropy bonus    | yes              | `install_tre_entropy` (patches verl's entropy)  |
| ROSE (branching + tree adv.)   | yes              | no: verl's rollouts do not branch and `compute_advantage` hands an estimator only rewards, mask, uid and config, so the tree never arrives |
| forking tokens (top-20% H)     | yes              | no: verl 0.9 does not pass the entropy to policy losses (only log-probs), and ranking by −log π is a different method |
| MGS / PCGrad                   | yes              | no                                              |

verl calls a policy loss with keywords (`verl/workers/utils/losses.py`): `old_log_prob`, `log_prob`,
`advantages`, `response_mask`, `loss_agg_mode`, `config`, `rollout_is_weights`; advantage estimators get
`token_level_rewards`, `response_mask`, `config`, and `index` (the prompt uid) when the batch has one.
Registration must run in every process that builds the trainer or actor workers (e.g. at the top of your verl
entry script and in a Ray `runtime_env` worker setup hook).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from agents.rl.advantages import AdvantageInputs, drgrpo, gae, grpo
from agents.rl.aggregation import aggregate
from agents.rl.losses import full_entropy, ppo_clip
from agents.rl.regularizers import tre_k_entropy, tre_p_entropy

ADV_ESTIMATORS = ("embedkit_grpo", "embedkit_drgrpo", "embedkit_gae")
POLICY_LOSSES = ("embedkit_ppo_clip",)
AGG_KEYS = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")


def _config_get(config: Any, key: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        getter = getattr(config, "get", None)
        value = getter(key, default) if callable(getter) else getattr(config, key, default)
    return default if value is None else value


def _group_ids(index: Sequence[Any] | None, n: int) -> list[int]:
    if index is None:  # verl passes no uid: every response is its own group
        return list(range(n))
    mapping: dict[Any, int] = {}
    return [mapping.setdefault(str(i), len(mapping)) for i in list(index)]


def verl_grpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                        index: Sequence[Any] | None = None, epsilon: float = 1e-6,
                        norm_adv_by_std_in_grpo: bool | None = None, config: Any = None,
                        **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """verl's estimator signature → embedkit GRPO (`norm_adv_by_std_in_grpo` from the argument, else the
    algorithm config, else True)."""
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = bool(_config_get(config, "norm_adv_by_std_in_grpo", True))
    inputs = AdvantageInputs(rewards=token_level_rewards.sum(-1), response_mask=response_mask.float(),
                             group_ids=_group_ids(index, token_level_rewards.shape[0]), eps=epsilon)  # fmt: skip
    adv, ret = (grpo if norm_adv_by_std_in_grpo else drgrpo)(inputs)
    return adv.to(token_level_rewards.dtype), ret.to(token_level_rewards.dtype)


def verl_drgrpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                          index: Sequence[Any] | None = None, epsilon: float = 1e-6, config: Any = None,
                          **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Dr.GRPO: the group-centred reward without the std division."""
    return verl_grpo_advantage(token_level_rewards, response_mask, index, epsilon, False, config)


def verl_gae_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                       values: torch.Tensor | None = None, config: Any = None, gamma: float | None = None,
                       lam: float | None = None, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """GAE over policy tokens (tool tokens skipped), for verl's estimator registry. Token-level rewards are
    kept as given (verl may have subtracted an in-reward KL on every token)."""
    if values is None:
        raise ValueError("embedkit_gae needs the critic values (`values=`)")
    gamma = float(gamma if gamma is not None else _config_get(config, "gamma", 1.0))
    lam = float(lam if lam is not None else _config_get(config, "lam", 1.0))
    inputs = AdvantageInputs(rewards=torch.zeros(token_level_rewards.shape[0]), response_mask=response_mask.float(),
                             group_ids=list(range(token_level_rewards.shape[0])), values=values, gamma=gamma,
                             lam=lam, token_rewards=token_level_rewards.float())  # fmt: skip
    adv, ret = gae(inputs)
    return adv.to(token_level_rewards.dtype), ret.to(token_level_rewards.dtype)


def _aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, config: Any) -> torch.Tensor:
    """verl's `agg_loss` with the global-batch info verl's `ppo_loss` put on the config (dp size, global
    token and sequence counts), so micro-batches and ranks add up; embedkit's `aggregate` without verl."""
    info = _config_get(config, "global_batch_info", None) or {}
    try:
        from verl.trainer.ppo.core_algos import agg_loss
    except ImportError:
        return aggregate(loss_mat, mask, mode, norm_length=info.get("loss_scale_factor"))
    return agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode,
                    **{k: info[k] for k in AGG_KEYS if k in info})  # fmt: skip


def verl_ppo_clip_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                       rollout_is_weights: torch.Tensor | None = None, **_: Any
                       ) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """Dual-clip PPO surrogate with verl's clip_ratio(_low/_high/_c), rollout importance weights and
    aggregation, returning verl's (loss, metrics)."""
    clip = float(_config_get(config, "clip_ratio", 0.2))
    low = float(_config_get(config, "clip_ratio_low", clip))
    high = float(_config_get(config, "clip_ratio_high", clip))
    out = ppo_clip(log_prob, old_log_prob, advantages, clip_low=low, clip_high=high,
                   clip_ratio_c=float(_config_get(config, "clip_ratio_c", 3.0)))  # fmt: skip
    loss_mat = out.loss if rollout_is_weights is None else out.loss * rollout_is_weights
    mask = response_mask.float()
    loss = _aggregate(loss_mat, mask, loss_agg_mode, config)
    metrics = {
        "actor/pg_clipfrac": float(aggregate(out.clipped, mask, "token-mean")),
        "actor/ppo_kl": float(aggregate(out.neg_log_ratio.detach(), mask, "token-mean")),
        "actor/pg_clipfrac_lower": float(aggregate(out.clipped_lower, mask, "token-mean")),
    }
    return loss, metrics


def probe_config(**overrides: Any) -> Any:
    """A minimal actor config verl's policy losses accept (clip ratios, empty global batch info)."""
    from omegaconf import OmegaConf

    base = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
            "global_batch_info": {}}  # fmt: skip
    base.update(overrides)
    return OmegaConf.create(base)


def register_with_verl() -> list[str]:
    """Register embedkit's estimators and losses in verl's registries; returns the names registered.

    Raises ImportError when verl is not installed (install the `verl` extra)."""
    from verl.trainer.ppo import core_algos

    registered = []
    for name, fn in (("embedkit_grpo", verl_grpo_advantage), ("embedkit_drgrpo", verl_drgrpo_advantage),
                     ("embedkit_gae", verl_gae_advantage)):  # fmt: skip
        if core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            core_algos.register_adv_est(name)(fn)
        registered.append(name)
    core_algos.register_policy_loss("embedkit_ppo_clip")(verl_ppo_clip_loss)
    registered.append("embedkit_ppo_clip")
    return registered


def tre_entropy_from_logits(logits: torch.Tensor, kind: str = "tre_k", k: int = 2, p: float = 0.99) -> torch.Tensor:
    """Drop-in for verl's `entropy_from_logits`: TRE-K / TRE-P / full entropy per position."""
    if kind == "tre_k":
        return tre_k_entropy(logits, k)
    if kind == "tre_p":
        return tre_p_entropy(logits, p)
    return full_entropy(logits)


def _chunked(fn: Any, logits: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    return torch.cat([fn(logits[i : i + chunk_size]) for i in range(0, logits.shape[0], chunk_size)])


def install_tre_entropy(kind: str = "tre_k", k: int = 2, p: float = 0.99) -> None:
    """Make verl's entropy bonus (actor.entropy_coeff) trust-region entropy; call before building actors
    (verl's engines look `entropy_from_logits` up when they are built)."""
    import verl.utils.torch_functional as verl_F

    fn = functools.partial(tre_entropy_from_logits, kind=kind, k=k, p=p)
    verl_F.entropy_from_logits = fn
    verl_F.entropy_from_logits_with_chunking = functools.partial(_chunked, fn)
