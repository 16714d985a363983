"""Plug embedkit's RL pieces into verl (>= 0.9.1, < 0.10) through verl's own registries.

    from agents.rl.verl_adapter import register_with_verl, install_tre_entropy
    register_with_verl()   # then in the verl config:
    #   algorithm.adv_estimator=embedkit_grpo | embedkit_drgrpo
    #   actor_rollout_ref.actor.policy_loss.loss_mode=embedkit_ppo_clip
    install_tre_entropy("tre_k", k=2)   # verl's entropy bonus (actor.entropy_coeff) becomes TRE-K

What runs where (embedkit's trainer, verl), and what to use in verl instead of what is not registered:
docs/rl.md. In short:

- Not registered, because verl cannot feed them (`NOT_REGISTERED` says why; asking `register_with_verl` for
  one raises that reason): `embedkit_gae` (use verl's own `gae`, which embedkit's GAE equals),
  `embedkit_rose`, `embedkit_forking`.
- verl's v1 trainer (`trainer.use_v1=true`, the default) gives the built-in name `grpo` a per-session
  treatment when an agent loop returns several outputs per session (only each session's final output enters
  its prompt's group, and its advantage is copied to the session's other outputs:
  `verl.trainer.ppo.v1.utils.compute_advantage_for_multi_trajectories`). A registered estimator is handed
  every output with the prompt uid and nothing that tells the sessions apart, and verl offers no hook to change
  that (only a trainer subclass replacing the private `_compute_advantage`), so with such an agent loop
  `embedkit_grpo` / `embedkit_drgrpo` are not GRPO: use `grpo` (with `norm_adv_by_std_in_grpo=false` for
  Dr.GRPO), which they equal output for output when every session has one output.

verl calls a policy loss with keywords (`verl/workers/utils/losses.py`): `old_log_prob`, `log_prob`,
`advantages`, `response_mask`, `loss_agg_mode`, `config`, `rollout_is_weights`; advantage estimators get
`token_level_rewards`, `response_mask`, `config` (the `algorithm` section), and `index` (the prompt uid)
when the batch has one. Registration must run in every process that builds the trainer or actor workers
(e.g. at the top of your verl entry script and in a Ray `runtime_env` worker setup hook).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from agents.rl.advantages import AdvantageInputs, drgrpo, grpo
from agents.rl.aggregation import aggregate
from agents.rl.losses import full_entropy, ppo_clip
from agents.rl.regularizers import tre_k_entropy, tre_p_entropy
from embedkit.errors import EmbedkitError

ADV_ESTIMATORS = ("embedkit_grpo", "embedkit_drgrpo")
POLICY_LOSSES = ("embedkit_ppo_clip",)
AGG_KEYS = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")
# Names that would need inputs verl never hands a registered function, with what to do instead.
NOT_REGISTERED: dict[str, str] = {
    "embedkit_gae": (
        "verl passes critic values only to its built-in `gae` (`ray_trainer.compute_advantage` hands a "
        "registered estimator token_level_rewards, response_mask, config and the uid, never `values`, and "
        "`need_critic` turns the critic off for any other estimator name); set algorithm.adv_estimator=gae, "
        "which embedkit's GAE equals"
    ),
    "embedkit_rose": (
        "ROSE needs its rollouts' branch tree, which `compute_advantage` never hands an estimator (only rewards, "
        "mask, uid and config); importing agents.rl.verl.rose (or its register_rose()) registers the "
        "embedkit_rose agent loop, estimator and v1 trainer that carries the tree to it (docs/rl.md, ROSE in verl)"
    ),
    "embedkit_forking": (
        "forking tokens are chosen by the policy's entropy; verl 0.9 calls a policy loss with log-probs, not "
        "the entropy (ranking by -log pi of the sampled token is a different method); use `embedkit rl train` "
        "(term: forking)"
    ),
}


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


_ESTIMATOR_FNS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "embedkit_grpo": verl_grpo_advantage,
    "embedkit_drgrpo": verl_drgrpo_advantage,
}
_LOSS_FNS: dict[str, Callable[..., tuple[torch.Tensor, dict[str, Any]]]] = {
    "embedkit_ppo_clip": verl_ppo_clip_loss,
}


def register_with_verl(names: Iterable[str] | None = None) -> list[str]:
    """Register embedkit's estimators and losses (all of them, or `names`) in verl's registries; returns the
    names registered. A name verl cannot feed (`NOT_REGISTERED`) raises EmbedkitError with the reason.

    Raises ImportError when verl is not installed (install the `verl` extra)."""
    if isinstance(names, str):
        names = [names]
    wanted = list(ADV_ESTIMATORS + POLICY_LOSSES) if names is None else list(names)
    for name in wanted:
        if name in NOT_REGISTERED:
            raise EmbedkitError(f"'{name}' is not registered with verl: {NOT_REGISTERED[name]}")
        if name not in _ESTIMATOR_FNS and name not in _LOSS_FNS:
            known = ", ".join(ADV_ESTIMATORS + POLICY_LOSSES)
            raise EmbedkitError(f"unknown embedkit verl name '{name}'; choose one of: {known}")
    from verl.trainer.ppo import core_algos

    for name in wanted:
        if name in _ESTIMATOR_FNS:
            if core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not _ESTIMATOR_FNS[name]:
                core_algos.register_adv_est(name)(_ESTIMATOR_FNS[name])
        else:
            core_algos.register_policy_loss(name)(_LOSS_FNS[name])
    return wanted


def tre_entropy_from_logits(logits: torch.Tensor, kind: str = "tre_k", k: int = 2, p: float = 0.99,
                            chunk_size: int = 2048) -> torch.Tensor:  # fmt: skip
    """Drop-in for verl's `entropy_from_logits(_with_chunking)`: TRE-K / TRE-P / full entropy per position
    (verl's engines have already divided the logits by the rollout temperature). No fp32 copy of the whole
    logits tensor is made (see `agents.rl.regularizers`)."""
    if kind == "tre_k":
        return tre_k_entropy(logits, k, chunk=chunk_size)
    if kind == "tre_p":
        return tre_p_entropy(logits, p, chunk=chunk_size)
    return full_entropy(logits, chunk=chunk_size)


def install_tre_entropy(kind: str = "tre_k", k: int = 2, p: float = 0.99) -> None:
    """Make verl's entropy bonus (actor.entropy_coeff) trust-region entropy; call before building actors.

    verl has no registry for its entropy: this replaces `entropy_from_logits` and
    `entropy_from_logits_with_chunking` in `verl.utils.torch_functional`, which verl's engines look up when
    they are built (a module-attribute patch, in this process only)."""
    import verl.utils.torch_functional as verl_F

    fn = functools.partial(tre_entropy_from_logits, kind=kind, k=k, p=p)
    verl_F.entropy_from_logits = fn
    verl_F.entropy_from_logits_with_chunking = fn
