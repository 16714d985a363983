"""CoCoA settings. Every choice the paper leaves open is a field here; docs/cocoa.md says which are inferred.

    config = CocoaConfig.from_yaml("configs/cocoa.yaml")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedkit.config import load_yaml_mapping, validate_config


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSettings(_Frozen):
    """Low-rank adapters (peft) on the language model; the vision tower stays as `freeze_vision` says."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    merge_on_save: bool = Field(True, description="export merged full weights in the final model folder")


class ModelSettings(_Frozen):
    name_or_path: str = Field(..., description="local folder or hub id (Qwen2-VL / Qwen2.5-VL)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    eos_token: str = "<|endoftext|>"
    mask_token: str = Field("<|mask|>", description="added to the tokenizer if missing (stage 1 and slots)")
    max_length: int = Field(256, gt=8)
    padding_side: Literal["left", "right"] = "left"
    gradient_checkpointing: bool = False
    freeze_vision: bool = Field(False, description="keep the vision tower fixed (its merger still trains)")
    lora: LoraSettings | None = None


class Stage1Settings(_Frozen):
    """Bidirectional warm-up with joint reconstruction (masked tokens, masked image patches)."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(1e-4, gt=0)
    text_mask_prob: float = Field(0.3, ge=0, le=1)
    image_mask_prob: float = Field(0.5, ge=0, le=1)
    text_objective: Literal["mntp", "mlm"] = Field(
        "mntp", description="mntp: predict a masked token from the position before it (fits the LM head); "
        "mlm: predict it at its own position")
    image_target: Literal["pixels", "features"] = Field(
        "pixels", description="pixels: the merged patches' normalised pixels (MAE-style); features: the "
        "vision tower's own (detached) output for the masked token")
    text_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)


class Stage2Settings(_Frozen):
    """EOS-bridged reconstruction with attention truncation."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(1e-4, gt=0)
    content_attention: Literal["causal", "bidirectional"] = "causal"
    reconstruct_text: bool = True
    reconstruct_image: bool = Field(True, description="regress image patches from <EOS> via query slots")
    image_target: Literal["pixels", "features"] = "pixels"
    image_slot_attention: Literal["causal", "bidirectional"] = "bidirectional"
    text_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)


class Stage3Settings(_Frozen):
    """Contrastive learning on <EOS> embeddings (VLM2Vec's recipe where CoCoA is silent)."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(5e-5, gt=0)
    temperature: float = Field(0.02, gt=0)
    hard_negatives: int = Field(1, ge=0, description="hard negatives per query taken from the data")
    in_batch_negatives: bool = True
    symmetric: bool = Field(False, description="also score targets against queries (CLIP-style)")
    content_attention: Literal["causal", "bidirectional"] = "causal"
    normalize: bool = True


class OptimSettings(_Frozen):
    batch_size: int = Field(8, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0


class DataSettings(_Frozen):
    pretrain: str | None = Field(None, description="jsonl of {text, image} (either may be missing)")
    contrastive: str | None = Field(None, description="jsonl in MMEB-train form: qry, qry_image_path, "
                                    "pos_text, pos_image_path, neg_text, neg_image_path")
    image_base_dir: str | None = Field(None, description="relative image paths are read from here")


class RunSettings(_Frozen):
    output_dir: str = "runs/cocoa"
    save_every: int = Field(50, gt=0)
    log_every: int = Field(10, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    device: str = "auto"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


class CocoaConfig(_Frozen):
    model: ModelSettings
    data: DataSettings = DataSettings()
    stage1: Stage1Settings = Stage1Settings()
    stage2: Stage2Settings = Stage2Settings()
    stage3: Stage3Settings = Stage3Settings()
    optim: OptimSettings = OptimSettings()
    run: RunSettings = RunSettings()

    @classmethod
    def from_yaml(cls, path: str | Path) -> CocoaConfig:
        """Read a YAML config; errors name the file and the offending field."""
        return validate_config(cls, load_yaml_mapping(path), path=path)

    def with_overrides(self, **sections) -> CocoaConfig:
        """A copy with some sections' fields replaced, e.g. `with_overrides(run={"output_dir": "x"})`."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section] = {**(data.get(section) or {}), **values}
        return CocoaConfig.model_validate(data)
