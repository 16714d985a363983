"""Shared RL module: rollouts, advantage estimators, policy-loss terms, gradient surgery, rewards, trainer.

Every algorithm is a registered piece picked by name from an `RLConfig` (see `agents.rl.config`):

    from agents.rl import RLConfig, train
    config = RLConfig.from_yaml("configs/rl_grpo_toy.yaml")
    train(config)
"""

from agents.rl.registry import Registry

__all__ = ["Registry"]
