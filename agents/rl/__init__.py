"""Shared RL module: rollouts, advantage estimators, policy-loss terms, gradient surgery, rewards, trainer.

Every algorithm is a registered piece picked by name from an `RLConfig` (see `agents.rl.config`):

    from agents.rl import RLConfig, train
    config = RLConfig.from_yaml("configs/rl_grpo_toy.yaml")
    train(config)

Which algorithms also run inside verl, and how to train real models: docs/rl.md.
"""

from typing import Any

from agents.rl.registry import Registry

__all__ = ["RLConfig", "Registry", "train"]


def __getattr__(name: str) -> Any:
    # `RLConfig` and `train` pull in torch and transformers: import them on first use only.
    if name == "RLConfig":
        from agents.rl.config import RLConfig

        return RLConfig
    if name == "train":
        from agents.rl.trainer import train

        return train
    raise AttributeError(f"module 'agents.rl' has no attribute {name!r}")
