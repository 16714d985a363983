"""The one reward registry (`REWARDS`) that rule rewards and generative reward models register into.

This module imports nothing from `agents.rewards` or the rule rewards, so either side can import it without
a cycle. The reward models are listed as lazy ``"module:attr"`` entries: their names are known (config
validation, `--help`) without importing the judges, and the first `REWARDS.get(name)` imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedkit.registry import Registry


@dataclass
class RewardBatch:
    """What a reward sees: every response of a rollout batch with its prompt and ground truth."""

    prompts: list[str]
    responses: list[str]
    ground_truths: list[Any]  # a string, a list of acceptable strings, or a task-specific dict
    group_ids: list[int] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)


RewardFn = Callable[[RewardBatch], list[float]]
REWARDS: Registry[Callable[..., RewardFn]] = Registry("reward")

# Every reward is listed lazily; its module registers the same object under the same name on import.
for _name, _attr in (("exact_match", "exact_match"), ("f1", "f1"), ("closeness", "closeness"),
                     ("math_boxed", "math_boxed"), ("countdown", "countdown"), ("format", "answer_format")):
    REWARDS.add(_name, f"agents.rl.rewards:{_attr}")
REWARDS.add("consistrm", "agents.rewards.consistrm:consistrm")
REWARDS.add("reflectrm_response", "agents.rewards.reflectrm:reflectrm_response")
REWARDS.add("reflectrm_analysis", "agents.rewards.reflectrm:reflectrm_analysis")
REWARDS.add("reflectrm", "agents.rewards.reflectrm:reflectrm")  # both ReflectRM tasks, dispatched per prompt
REWARDS.add("acpo", "agents.rewards.acgenrm:acpo")


def build_reward(name: str, **params: Any) -> RewardFn:
    """Instantiate a registered reward with its parameters."""
    return REWARDS.get(name)(**params)
