"""Generative reward models: ConsistRM, ReflectRM, AC-GenRM with ACPO.

Judges talk to any `agents.llm.LLMBackend`. Evaluation: `pairs` (RewardBench / RM-Bench loaders),
`judges` (registry `JUDGES`), `evaluate` (both-orders harness), `pair_data` (labelled pairs with known winners);
training: `training` (`judge_prompts` task, `GRMTrainer`, prompt builders). The training rewards (`consistrm`,
`reflectrm`, `reflectrm_response`, `reflectrm_analysis`, `acpo`) live in the one reward registry, `agents.rl.reward_registry.REWARDS`
(lazy entries there; these modules register the same objects when imported).
"""

from agents.rewards.acgenrm import ACGenRM, acpo_rewards, round_robin_scores
from agents.rewards.consistrm import ConsistRMReward, PseudoLabeler
from agents.rewards.reflectrm import ReflectRM

__all__ = ["ACGenRM", "ConsistRMReward", "PseudoLabeler", "ReflectRM", "acpo_rewards", "round_robin_scores"]
