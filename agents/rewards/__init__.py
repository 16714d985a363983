"""Generative reward models: ConsistRM, ReflectRM, AC-GenRM with ACPO.

Judges talk to any `agents.llm.LLMBackend`. The training rewards (`consistrm`, `reflectrm_response`,
`reflectrm_analysis`, `acpo`) live in the one reward registry, `agents.rl.reward_registry.REWARDS`
(lazy entries there; these modules register the same objects when imported).
"""

from agents.rewards.acgenrm import ACGenRM, acpo_rewards, round_robin_scores
from agents.rewards.consistrm import ConsistRMReward, PseudoLabeler
from agents.rewards.reflectrm import ReflectRM

__all__ = ["ACGenRM", "ConsistRMReward", "PseudoLabeler", "ReflectRM", "acpo_rewards", "round_robin_scores"]
