"""Training configuration: pydantic models loaded from YAML (see configs/train_multitask.yaml).

Defaults marked *inferred* come from the BOOM release notes rather than a published recipe: 7 hard
negatives, 1 epoch, LoRA r=32 for models over 1B parameters, last-token pooling for decoder bases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from embedkit.config import YamlConfig

Strategy = Literal["batch_shuffle", "mixed", "sequential", "two_stage"]
Pooling = Literal["auto", "cls", "mean", "lasttoken", "max", "weightedmean"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
WeightsDtype = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_HARD_NEGATIVES = 7  # inferred from the BOOM release
DEFAULT_EPOCHS = 1.0  # inferred from the BOOM release
DEFAULT_LORA_RANK = 32  # inferred: LoRA r=32 for models over 1B parameters
LORA_AUTO_MIN_PARAMS = 1_000_000_000
DEFAULT_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "


class DatasetConfig(YamlConfig):
    """One training task.

    `path`: a FlagEmbedding-style jsonl or parquet (`query`, `pos` list, `neg` list, optional `prompt`;
    sentence-transformers' `anchor`/`positive`/`negative*` columns work too), a hub dataset
    `hf:ORG/NAME[/CONFIG][:SPLIT]` (SPLIT defaults to `split`), or a BEIR folder whose
    `qrels/<split>.tsv` gives (query, positive document) pairs. `weight` scales how many of
    its examples one epoch sees (2.0 = each example twice, 0.5 = a random half). `instruction` is put
    before every query through the template. `stage` (1 or 2) is used by the two_stage strategy.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    format: Literal["auto", "jsonl", "parquet", "beir", "hf"] = "auto"
    split: str = "train"
    weight: float = Field(1.0, gt=0)
    instruction: str | None = None
    hard_negatives: int | None = Field(None, ge=0, description="overrides the global hard_negatives")
    max_examples: int | None = Field(None, gt=0, description="keep the first N rows (queries)")
    stage: Literal[1, 2] | None = None
    task_type: str | None = Field(None, description="e.g. retrieval, sts, classification, clustering; "
                                  "orders tasks for sequential_order: by_task_type")


class LoraSettings(YamlConfig):
    """LoRA through peft. `enabled: auto` turns it on for models above `auto_min_params` parameters."""

    enabled: bool | Literal["auto"] = "auto"
    r: int = Field(DEFAULT_LORA_RANK, gt=0)
    alpha: int = Field(64, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    auto_min_params: int = LORA_AUTO_MIN_PARAMS


class TrainConfig(YamlConfig):
    """A multi-task training run: `TrainConfig.from_yaml("configs/train_multitask.yaml", overrides=...)`."""

    model: str = Field(description="base model: sentence-transformers folder, transformers folder, or hub id")
    output_dir: str
    datasets: list[DatasetConfig] = Field(min_length=1)
    strategy: Strategy = "batch_shuffle"
    mixed_negatives: Literal["group", "pad"] = Field(
        "group", description="mixed: 'group' pools tasks with the same hard-negative count (a batch never "
        "mixes counts; each task keeps all its negatives); 'pad' gives every task the largest count, "
        "filling missing ones from the task's other passages")
    sequential_order: Literal["given", "reversed", "by_task_type"] = Field(
        "given", description="sequential: datasets in config order, reversed, or grouped by task_type")
    task_type_order: list[str] | None = Field(
        None, description="by_task_type: the order of task types (default: order of first appearance)")
    loss: str = "mnrl"
    loss_scale: float = Field(20.0, gt=0, description="inverse temperature of the contrastive loss")
    mini_batch_size: int = Field(32, gt=0, description="GradCache chunk size for cached_mnrl")
    gather_across_devices: bool = Field(
        True, description="in-batch negatives from every GPU's batch (multi-GPU runs), not only this one's")
    hard_negatives: int = Field(DEFAULT_HARD_NEGATIVES, ge=0)
    epochs: float = Field(DEFAULT_EPOCHS, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (per stage)")
    batch_size: int = Field(32, gt=1)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="decay after warm-up (transformers' lr_scheduler_type)")
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int | None = Field(None, gt=0)
    pooling: Pooling = "auto"
    normalize: bool = True
    instruction_template: str = DEFAULT_INSTRUCTION_TEMPLATE
    lora: LoraSettings = LoraSettings()
    precision: Precision = Field("auto", description="mixed precision of the compute (autocast); the "
                                 "optimizer keeps fp32 master weights when `dtype` is float32")
    dtype: WeightsDtype = Field(
        "float32", description="dtype the weights are loaded in; bfloat16/float16 halve memory but are only "
        "allowed with LoRA (full fine-tuning needs fp32 master weights); auto: bfloat16 with LoRA on a GPU")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    append_eos: bool | Literal["auto"] = Field(
        "auto", description="append the EOS token to every input (auto: for decoder bases with last-token "
        "pooling, as Qwen3-Embedding-style models expect)")
    gradient_checkpointing: bool = False
    seed: int = 42
    checkpoint_dir: str | None = Field(None, description="default: <output_dir>.checkpoints")
    save_steps: int = Field(500, gt=0)
    save_total_limit: int = Field(2, gt=0)
    logging_steps: int = Field(50, gt=0)
    resume: bool = Field(True, description="continue from the newest checkpoint when one exists")
    keep_checkpoints: bool = False
    evaluation: list[str] = Field(default_factory=list, description="BEIR folders evaluated after training")
    evaluation_split: str = "test"
    evaluation_prompts: dict[str, str] = Field(
        default_factory=dict, description="evaluation dataset name -> query prompt; default: the prompt "
        "saved for the training task of the same name, else the model's 'query' prompt")
    device: str = "auto"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.strategy == "two_stage":
            missing = [d.name for d in self.datasets if d.stage is None]
            if missing:
                raise ValueError(f"two_stage needs `stage: 1` or `stage: 2` on every dataset; missing on {missing}")
            if {d.stage for d in self.datasets} != {1, 2}:
                raise ValueError("two_stage needs at least one dataset in stage 1 and one in stage 2")
        if self.sequential_order == "by_task_type" and self.strategy == "sequential":
            missing = [d.name for d in self.datasets if d.task_type is None]
            if missing:
                raise ValueError(f"sequential_order: by_task_type needs task_type on every dataset; missing on {missing}")
            if self.task_type_order is not None:
                unknown = sorted({d.task_type for d in self.datasets if d.task_type} - set(self.task_type_order))
                if unknown:
                    raise ValueError(f"task_type_order does not list {unknown}")
        if self.gradient_accumulation_steps > 1 and self.loss in ("mnrl", "MultipleNegativesRankingLoss"):
            raise ValueError(
                "with mnrl, gradient accumulation does not grow the in-batch negatives (each micro-batch only "
                "sees its own); use loss: cached_mnrl with the full batch_size and mini_batch_size as the "
                "memory chunk (GradCache), or gradient_accumulation_steps: 1")
        if "{instruction}" not in self.instruction_template:
            raise ValueError("instruction_template must contain {instruction}")
        return self

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(f"{self.output_dir.rstrip('/')}.checkpoints")


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """`TrainConfig.from_yaml` with keyword overrides (dotted keys allowed; None = not given)."""
    return TrainConfig.from_yaml(path, overrides={k: v for k, v in overrides.items() if v is not None})
