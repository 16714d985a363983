"""verl v1 trainer modes that run embedkit's actor worker and group GRPO by session (registered on import).

    trainer.v1.trainer_mode=embedkit_sync        # or embedkit_colocate_async / embedkit_separate_async

For each trainer mode verl 0.9.1 registers (`sync`, `colocate_async`, `separate_async`; `register_trainer`),
`embedkit_<mode>` is the same trainer with two differences:

- its actor (and reference) workers are `agents.rl.verl.actor.EmbedkitActorRolloutRefWorker`, so TRE / MGS
  from `actor_rollout_ref.embedkit` run in every Ray worker; the settings are checked when the trainer is
  built, before any worker starts;
- while verl computes advantages, the batch's session keys (`{uid}_{session}_{index}`) are in
  `agents.rl.verl_adapter.SESSION_KEYS`, so `embedkit_grpo` / `embedkit_drgrpo` give each session's final
  output a place in its prompt's group and copy its advantage to the session's other outputs, as verl does
  for its built-in `grpo` only.
"""

from __future__ import annotations

from typing import Any

from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.workers.engine_workers import ActorRolloutRefWorker

from agents.rl.verl.actor import EmbedkitActorRolloutRefWorker, actor_settings, check_supported
from agents.rl.verl_adapter import SESSION_KEYS

PREFIX = "embedkit_"


def _is_distillation(config: Any) -> bool:
    from verl.trainer.distillation import is_distillation_enabled

    return bool(is_distillation_enabled(config.get("distillation")))


class VerlModeName:
    """A trainer's `trainer_mode` as verl reads it: the name of the verl mode the class extends.

    verl picks the replay buffer, the dataloader refill and the per-mode settings
    (`trainer.v1.<mode>.parameter_sync_step`, ...) by comparing this name with its own ("sync", ...); a
    registered name such as `embedkit_sync` would make a sync trainer behave as an async one.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __get__(self, trainer: Any, owner: type | None = None) -> str:
        return self.mode

    def __set__(self, trainer: Any, value: str) -> None:
        pass  # verl's __init__ assigns the configured (registered) name


class EmbedkitTrainerMixin:
    """The two changes above, on top of one of verl's trainer classes."""

    config: Any
    role_worker_mapping: dict[Any, Any]

    def __init__(self, config: Any, *args: Any, **kwargs: Any):
        check_supported(config.actor_rollout_ref, actor_settings(config.actor_rollout_ref),
                        distillation=_is_distillation(config))  # fmt: skip
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]

    def _init_resource_pool_mgr(self) -> Any:
        import ray

        result = super()._init_resource_pool_mgr()  # type: ignore[misc]
        ours = ray.remote(EmbedkitActorRolloutRefWorker)
        for role, worker in list(self.role_worker_mapping.items()):
            if getattr(worker, "__ray_actor_class__", None) is ActorRolloutRefWorker:
                self.role_worker_mapping[role] = ours
        return result

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        token = SESSION_KEYS.set(list(batch.keys))
        try:
            return super()._compute_advantage(batch, metrics)  # type: ignore[misc]
        finally:
            SESSION_KEYS.reset(token)


def register_trainer_modes() -> list[str]:
    """`embedkit_<mode>` for every trainer mode verl has registered; returns the names (idempotent)."""
    names = []
    for mode, cls in list(TRAINER_REGISTRY.items()):
        if mode.startswith(PREFIX):
            continue
        name = PREFIX + mode
        if name not in TRAINER_REGISTRY:
            subclass = type(f"Embedkit{cls.__name__}", (EmbedkitTrainerMixin, cls),
                            {"__module__": __name__, "trainer_mode": VerlModeName(mode)})
            globals()[subclass.__name__] = subclass  # Ray pickles the class by reference: module attribute
            register_trainer(name)(subclass)
        names.append(name)
    return names


assert trainer_base.PPOTrainer  # verl's v1 trainer modes are registered by importing verl.trainer.ppo.v1
TRAINER_MODES = register_trainer_modes()
