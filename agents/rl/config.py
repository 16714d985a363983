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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from agents.rl.rollout import RolloutSettings
from embedkit.config import YamlConfig, apply_overrides, validate_config


def _registered(module: str, attr: str):
    """A pydantic check that a name is in one of the RL registries (imported lazily: no cycles)."""

    def check(name: str) -> str:
        import importlib

        registry = getattr(importlib.import_module(module), attr)
        if name not in registry:
            raise ValueError(f"unknown {registry.kind} '{name}'; choose one of: {', '.join(registry.names())}")
        return name

    return AfterValidator(check)


EstimatorName = Annotated[str, _registered("agents.rl.advantages", "ADVANTAGE_ESTIMATORS")]
TermName = Annotated[str, _registered("agents.rl.regularizers", "POLICY_TERMS")]
SurgeryName = Annotated[str, _registered("agents.rl.surgery", "GRADIENT_SURGERY")]
RewardName = Annotated[str, _registered("agents.rl.reward_registry", "REWARDS")]
RolloutName = Annotated[str, _registered("agents.rl.rollout", "ROLLOUT_STRATEGIES")]
TaskName = Annotated[str, _registered("agents.rl.tasks", "TASKS")]
AggMode = Literal["token-mean", "seq-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


class PolicyConfig(YamlConfig):
    model: str = "toy:char-gpt2"  # "toy:char-gpt2" builds a tiny random-init model with a character tokenizer
    tokenizer: str | None = None  # defaults to `model`
    toy_layers: int = 2
    toy_width: int = 64
    toy_heads: int = 4
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bf16/fp16 weights train with fp32 master state
    gradient_checkpointing: bool = False
    critic: Literal["separate", "shared"] = "separate"  # gae/ppo: own trunk (verl's critic) or a head on the policy


class WarmupConfig(YamlConfig):
    """Supervised warm-up on the task's demonstrations before RL (0 steps = none)."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 32


class AlgorithmConfig(YamlConfig):
    estimator: EstimatorName = "grpo"  # grpo | drgrpo | gae (= ppo) | rose
    loss_agg: AggMode | None = None  # None: per estimator (seq-mean-token-sum-norm for drgrpo, else token-mean)
    norm_length: int | None = None  # seq-mean-token-sum-norm's constant (verl's loss_scale_factor; default max_new_tokens)
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages (verl's actor.clip_ratio_c)
    kl_coef: float = 0.0  # KL to the reference (the policy after warm-up); 0 = no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    gamma: float = 1.0
    lam: float = 1.0
    eps: float = 1e-6
    value_coef: float = 0.5  # gae/ppo: critic loss weight
    value_clip: float = 0.5  # verl's critic.cliprange_value
    ppo_epochs: int = 1
    mini_batches: int = 1
    length_alpha: float = 0.0  # ROSE length-aware term (0 = off); "correct" means reward != 0
    filter_zero_variance_groups: bool = False  # drop groups whose rewards are all equal (no signal) before updating

    def aggregation(self) -> str:
        if self.loss_agg:
            return self.loss_agg
        return "seq-mean-token-sum-norm" if self.estimator == "drgrpo" else "token-mean"


class NamedConfig(YamlConfig):
    name: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)


class TermConfig(NamedConfig):
    name: TermName = "none"


class SurgeryConfig(NamedConfig):
    name: SurgeryName = "none"


class RewardConfig(NamedConfig):
    name: RewardName = "exact_match"


class TaskConfig(NamedConfig):
    name: TaskName = "digit_map"


class ServerConfig(YamlConfig):
    """An OpenAI-compatible inference server (vLLM, SGLang) serving the policy for rollouts."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "policy"  # the served model name
    api_key: str | None = None
    timeout_s: float = 300.0
    concurrency: int = 16
    # after each update: save the policy to `sync_dir` and ask the server to reload it (SGLang's
    # /update_weights_from_disk; vLLM needs a reload endpoint or a restart), or "none" (frozen server)
    weight_sync: Literal["save_reload", "none"] = "save_reload"
    sync_dir: str | None = None  # default: <output_dir>/served-policy
    reload_path: str = "/update_weights_from_disk"  # relative to the server root (base_url without /v1)


class RolloutConfig(YamlConfig):
    strategy: RolloutName = "sample"  # sample | rose
    group_size: int = 8
    backend: Literal["hf", "openai"] = "hf"  # HF generate in the trainer, or an OpenAI-compatible server
    server: ServerConfig = ServerConfig()
    settings: RolloutSettings = RolloutSettings()


class ToolConfig(YamlConfig):
    """A search tool over an embedkit index folder (`kind: index`), or none."""

    kind: Literal["none", "index"] = "none"
    path: str | None = None
    k: int = 1
    max_chars: int = 400


class TrainerConfig(YamlConfig):
    steps: int = 100
    prompts_per_step: int = 8  # per process; under accelerate every rank gets its own shard of the prompts
    micro_batch_size: int | None = None  # sequences per forward/backward (gradient accumulation); None = mini-batch
    logprob_chunk: int = 1024  # positions per log-softmax slice (never a full fp32 [N, T, V] tensor)
    lr: float = 1e-4
    lr_warmup_steps: int = 0  # linear LR warm-up over the first optimizer updates (Adam's first steps are large)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay after the warm-up
    min_lr_ratio: float = 0.0  # the decayed LR ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    output_dir: str = "runs/rl"
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    num_threads: int | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate autocast (fp32 weights)
    progress: bool = True
    memory_estimate: bool = True  # print the estimated memory at start


class RLConfig(YamlConfig):
    task: TaskConfig = TaskConfig()
    policy: PolicyConfig = PolicyConfig()
    warmup: WarmupConfig = WarmupConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    term: TermConfig = TermConfig()
    surgery: SurgeryConfig = SurgeryConfig()
    reward: RewardConfig = RewardConfig()
    metric_rewards: list[RewardName] = Field(default_factory=list)  # extra rewards logged as metric/<name>
    tool: ToolConfig = ToolConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.rollout.group_size < 1 or self.trainer.prompts_per_step < 1:
            raise ValueError("group_size and prompts_per_step must be >= 1")
        if self.algorithm.clip_ratio_c <= 1.0:
            raise ValueError("algorithm.clip_ratio_c must be > 1 (dual-clip PPO)")
        if self.trainer.micro_batch_size is not None and self.trainer.micro_batch_size < 1:
            raise ValueError("trainer.micro_batch_size must be >= 1")
        if self.rollout.backend == "openai" and self.rollout.strategy == "rose":
            raise ValueError("ROSE branching rollouts need the HF backend (rollout.backend: hf)")
        return self

    @classmethod
    def from_yaml(  # type: ignore[override]  # `overrides` may also be positional (older callers)
        cls, path: str | Path, overrides: dict[str, Any] | None = None, *, section: str | None = None
    ) -> RLConfig:
        """Load a YAML file; `overrides` maps dotted keys (`trainer.steps`) to values (`--set`)."""
        return super().from_yaml(path, section=section, overrides=overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> RLConfig:
        return validate_config(cls, data, path=source)

    @classmethod
    def from_overrides(cls, data: dict[str, Any], overrides: dict[str, Any]) -> RLConfig:
        return cls.from_dict(apply_overrides(data, overrides))
