"""Plug embedkit's RL pieces into verl (>= 0.9.1, < 0.10) through verl's own registries.

    from agents.rl.verl_adapter import register_with_verl
    register_with_verl()   # then in the verl config:
    #   algorithm.adv_estimator=embedkit_grpo | embedkit_drgrpo
    #   actor_rollout_ref.actor.policy_loss.loss_mode=embedkit_ppo_clip

`python -m agents.rl.verl ...` (agents/rl/verl/launcher.py) registers these and everything else embedkit adds
(TRE / MGS in verl's actor worker, the v1 trainer modes `embedkit_*`, reward managers, tools) in every process,
Ray workers included, and hands over to verl's own `main_ppo`. What runs where: docs/rl.md. In short:

- Not registered, because verl cannot feed them (`NOT_REGISTERED` says why; asking `register_with_verl` for
  one raises that reason): `embedkit_gae` (use verl's own `gae`, which embedkit's GAE equals),
  `embedkit_rose`, `embedkit_forking`.
- verl's v1 trainer (`trainer.use_v1=true`, the default) gives the built-in name `grpo` a per-session
  treatment when an agent loop returns several outputs per session (only each session's final output enters
  its prompt's group, and its advantage is copied to the session's other outputs:
  `verl.trainer.ppo.v1.utils.compute_advantage_for_multi_trajectories`). A registered estimator is handed
  every output with the prompt uid and nothing that tells the sessions apart. The trainer modes `embedkit_sync`
  (and `embedkit_colocate_async`, `embedkit_separate_async`) of `agents.rl.verl.trainer` put the batch's
  session keys in `SESSION_KEYS` while verl computes advantages, and `embedkit_grpo` / `embedkit_drgrpo` then
  group sessions exactly as `grpo` does. Under verl's own trainer modes they see outputs, not sessions.
- TRE is no longer installed by replacing `verl.utils.torch_functional.entropy_from_logits` (that bypassed
  fused kernels and Megatron, changed the logged entropy and never reached Ray workers): it is a loss term in
  embedkit's actor worker (`agents.rl.verl.actor`, `+actor_rollout_ref.embedkit.tre.kind=tre_k`).

verl calls a policy loss with keywords (`verl/workers/utils/losses.py`): `old_log_prob`, `log_prob`,
`advantages`, `response_mask`, `loss_agg_mode`, `config`, `rollout_is_weights`; advantage estimators get
`token_level_rewards`, `response_mask`, `config` (the `algorithm` section), and `index` (the prompt uid)
when the batch has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

import torch

from agents.rl.advantages import AdvantageInputs, drgrpo, grpo
from agents.rl.aggregation import aggregate
from agents.rl.losses import ppo_clip
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


# The v1 trainer's row keys `{uid}_{session}_{index}` while it computes advantages (set by the `embedkit_*` trainer
# modes of agents.rl.verl.trainer); None elsewhere, where every row is its own session.
SESSION_KEYS: ContextVar[Sequence[str] | None] = ContextVar("embedkit_verl_session_keys", default=None)


def final_outputs(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    """Rows of each session's final output (highest index), and for every row the position of its session in
    that list: keys `{uid}_{session}_{index}` as verl's agent loops write them."""
    final: dict[str, tuple[int, int]] = {}
    sessions = []
    for row, key in enumerate(keys):
        uid_session, _, index = str(key).rpartition("_")
        if not uid_session or not index.lstrip("-").isdigit():
            raise EmbedkitError(f"unexpected v1 batch key '{key}' (expected '{{uid}}_{{session}}_{{index}}')")
        sessions.append(uid_session)
        if uid_session not in final or final[uid_session][0] < int(index):
            final[uid_session] = (int(index), row)
    order = {session: i for i, session in enumerate(final)}
    return [row for _, row in final.values()], [order[s] for s in sessions]


def _per_session(estimator: Callable[..., tuple[torch.Tensor, torch.Tensor]], keys: Sequence[str],
                 token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Sequence[Any] | None,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """GRPO over sessions: the group holds each session's final output; its advantage (at its first response
    token) is copied to every response token of the session's outputs."""
    rows, session_of = final_outputs(keys)
    uids = None if index is None else [list(index)[r] for r in rows]
    token = SESSION_KEYS.set(None)  # the final outputs are one row per session
    try:
        adv, _ = estimator(token_level_rewards[rows], response_mask[rows], uids, **kwargs)
    finally:
        SESSION_KEYS.reset(token)
    first = response_mask[rows].argmax(-1)
    scores = adv[torch.arange(len(rows)), first][session_of].unsqueeze(-1) * response_mask
    return scores.to(token_level_rewards.dtype), scores.to(token_level_rewards.dtype)


def verl_grpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                        index: Sequence[Any] | None = None, epsilon: float = 1e-6,
                        norm_adv_by_std_in_grpo: bool | None = None, config: Any = None,
                        **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """verl's estimator signature → embedkit GRPO (`norm_adv_by_std_in_grpo` from the argument, else the
    algorithm config, else True); over sessions while `SESSION_KEYS` is set (the v1 `embedkit_*` trainers)."""
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = bool(_config_get(config, "norm_adv_by_std_in_grpo", True))
    keys = SESSION_KEYS.get()
    if keys is not None and len(keys) == token_level_rewards.shape[0]:
        return _per_session(verl_grpo_advantage, keys, token_level_rewards, response_mask, index, epsilon=epsilon,
                            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)  # fmt: skip
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
