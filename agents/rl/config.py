"""Typed RL configuration, loaded from YAML (`RLConfig.from_yaml`). Every `name` picks a registry entry.

    task:      {name: digit_map, params: {domains: [next, double]}}
    policy:    {model: "toy:char-gpt2"}                # or a local path / hub id of a causal LM
    rollout:   {strategy: sample, group_size: 8, settings: {max_new_tokens: 16}}
    algorithm: {estimator: grpo, loss_agg: token-mean, kl_coef: 0.0}
    term:      {name: tre_k, params: {coef: 0.001, k: 2}}
    surgery:   {name: none}
    reward:    {name: exact_match}
    trainer:   {steps: 100, prompts_per_step: 8, lr: 1.0e-4, output_dir: runs/grpo}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.rl.rollout import RolloutSettings
from embedkit.config import apply_overrides, load_yaml_mapping, validate_config


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyConfig(_Frozen):
    model: str = "toy:char-gpt2"  # "toy:char-gpt2" builds a tiny random-init model with a character tokenizer
    tokenizer: str | None = None  # defaults to `model`
    toy_layers: int = 2
    toy_width: int = 64
    toy_heads: int = 4
    dtype: str = "float32"
    gradient_checkpointing: bool = False


class WarmupConfig(_Frozen):
    """Supervised warm-up on the task's demonstrations before RL (0 steps = none)."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 32


class AlgorithmConfig(_Frozen):
    estimator: str = "grpo"  # grpo | drgrpo | gae (= ppo) | rose
    loss_agg: str | None = None  # token-mean | seq-mean | seq-mean-token-sum-norm; None: per estimator
    norm_length: int | None = None  # Dr.GRPO's constant (default: rollout max_new_tokens)
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0  # KL to the reference (the policy after warm-up); 0 = no reference model
    kl_estimator: str = "k3"  # k1 | k3
    gamma: float = 1.0
    lam: float = 1.0
    eps: float = 1e-6
    value_coef: float = 0.5  # gae/ppo: critic loss weight
    value_clip: float = 0.5  # verl's critic.cliprange_value
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages (verl's actor.clip_ratio_c)
    ppo_epochs: int = 1
    mini_batches: int = 1
    length_alpha: float = 0.0  # ROSE length-aware term (0 = off); "correct" means reward != 0

    def aggregation(self) -> str:
        if self.loss_agg:
            return self.loss_agg
        return "seq-mean-token-sum-norm" if self.estimator == "drgrpo" else "token-mean"


class NamedConfig(_Frozen):
    name: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)


class RolloutConfig(_Frozen):
    strategy: str = "sample"  # sample | rose
    group_size: int = 8
    settings: RolloutSettings = RolloutSettings()


class ToolConfig(_Frozen):
    """A search tool over an embedkit index folder (`kind: index`), or none."""

    kind: str = "none"  # none | index
    path: str | None = None
    k: int = 1
    max_chars: int = 400


class TrainerConfig(_Frozen):
    steps: int = 100
    prompts_per_step: int = 8
    lr: float = 1e-4
    lr_warmup_steps: int = 0  # linear LR warm-up over the first optimizer updates (Adam's first steps are large)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    output_dir: str = "runs/rl"
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    num_threads: int | None = None
    mixed_precision: str = "no"
    progress: bool = True


class RLConfig(_Frozen):
    task: NamedConfig = NamedConfig(name="digit_map")
    policy: PolicyConfig = PolicyConfig()
    warmup: WarmupConfig = WarmupConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    term: NamedConfig = NamedConfig()
    surgery: NamedConfig = NamedConfig()
    reward: NamedConfig = NamedConfig(name="exact_match")
    metric_rewards: list[str] = Field(default_factory=list)  # extra rewards logged as metric/<name>, not trained on
    tool: ToolConfig = ToolConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _check_names(self) -> RLConfig:
        from agents.rl.advantages import ADVANTAGE_ESTIMATORS
        from agents.rl.aggregation import AGG_MODES
        from agents.rl.regularizers import POLICY_TERMS
        from agents.rl.reward_registry import REWARDS
        from agents.rl.rollout import ROLLOUT_STRATEGIES
        from agents.rl.surgery import GRADIENT_SURGERY
        from agents.rl.tasks import TASKS

        checks = [(ADVANTAGE_ESTIMATORS, self.algorithm.estimator), (POLICY_TERMS, self.term.name),
                  (GRADIENT_SURGERY, self.surgery.name), (REWARDS, self.reward.name),
                  (ROLLOUT_STRATEGIES, self.rollout.strategy), (TASKS, self.task.name)]  # fmt: skip
        checks += [(REWARDS, name) for name in self.metric_rewards]
        for registry, name in checks:
            if name not in registry:
                raise ValueError(f"unknown {registry.kind} '{name}'; choose one of: {', '.join(registry.names())}")
        if self.algorithm.aggregation() not in AGG_MODES:
            raise ValueError(f"unknown loss_agg '{self.algorithm.loss_agg}'; choose one of: {', '.join(AGG_MODES)}")
        if self.algorithm.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be k1 or k3")
        if self.rollout.group_size < 1 or self.trainer.prompts_per_step < 1:
            raise ValueError("group_size and prompts_per_step must be >= 1")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> RLConfig:
        """Load a YAML file; `overrides` maps dotted keys (`trainer.steps`) to values."""
        return cls.from_dict(apply_overrides(load_yaml_mapping(path), overrides or {}), source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> RLConfig:
        return validate_config(cls, data, path=source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
