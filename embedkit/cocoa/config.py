"""CoCoA settings. Every choice the paper leaves open is a field here; docs/cocoa.md says which are inferred.

    config = CocoaConfig.from_yaml("configs/cocoa.yaml", overrides={"stage1.steps": 10})
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from embedkit.config import YamlConfig

Attention = Literal["causal", "bidirectional"]


class LoraSettings(YamlConfig):
    """Low-rank adapters (peft) on the language model; the vision tower stays as `freeze_vision` says."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    merge_on_save: bool = Field(True, description="export merged full weights in the final model folder")


class ModelSettings(YamlConfig):
    name_or_path: str = Field(..., description="local folder or hub id (Qwen2-VL / Qwen2.5-VL)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype; bfloat16/float16 only with LoRA (full fine-tuning keeps fp32 "
        "master weights: use float32 with run.mixed_precision: bf16); auto: bfloat16 on a GPU with LoRA")
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="flash_attention_2 is not offered: every CoCoA stage passes its own 4D mask, "
        "which flash-attention kernels do not take")
    eos_token: str = "<|endoftext|>"
    mask_token: str = Field("<|mask|>", description="added to the tokenizer if missing (stage 1 and slots)")
    max_length: int = Field(256, gt=8, description="token budget of one sequence's content: instruction, "
                            "image tokens and text together (text is cut first, then images are scaled down)")
    min_pixels: int | None = Field(None, gt=0, description="Qwen2-VL processor's min_pixels (default 56*56)")
    max_pixels: int | None = Field(None, gt=0, description="Qwen2-VL processor's max_pixels (default 28*28*1280)")
    text_reserve: int = Field(16, ge=0, description="tokens kept free for text when images are fitted "
                              "into max_length")
    padding_side: Literal["left", "right"] = "left"
    gradient_checkpointing: bool = False
    freeze_vision: bool = Field(False, description="keep the vision tower fixed (its merger still trains)")
    lora: LoraSettings | None = None


class Stage1Settings(YamlConfig):
    """Bidirectional warm-up with joint reconstruction (masked tokens, masked image patches)."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(1e-4, gt=0)
    attention: Attention = Field("bidirectional", description="attention flow of the warm-up")
    image_mask_at: Literal["pixels", "features"] = Field(
        "pixels", description="pixels: masked patches are replaced by a learned mask patch BEFORE the vision "
        "encoder (its attention cannot spread their content); features: the merged vision output is "
        "replaced by the mask token's embedding (leaks the masked content through the vision tower)")
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


class Stage2Settings(YamlConfig):
    """EOS-bridged reconstruction with attention truncation."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(1e-4, gt=0)
    content_attention: Attention = "causal"
    bridge: Literal["final", "layerwise"] = Field(
        "final", description="final: the decoder reads the final-layer <EOS> state (the embedding stage 3 "
        "and inference use), fed back as <EOS>'s input in a second pass; layerwise: one pass where the "
        "decoder reads <EOS>'s keys and values at every layer (the final-layer <EOS> output is then in no "
        "stage-2 loss)")
    decoder_start_token: str = Field(
        "<|im_start|>", description="put after <EOS>; its state (not <EOS>'s) predicts the first target "
        "token, so the embedding is only read through attention")
    text_target: Literal["text", "description"] = Field(
        "text", description="text: reconstruct the record's text; description: its `description` field")
    remove_caption: bool = Field(
        True, description="a record with an image and a text target: the content is the image alone, so the "
        "target must pass through <EOS> instead of being copied from visible content")
    reconstruct_text: bool = True
    reconstruct_image: bool = Field(True, description="regress image patches from <EOS> via query slots")
    image_target: Literal["pixels", "features"] = "pixels"
    image_slot_attention: Attention = "bidirectional"
    text_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)


class Stage3Settings(YamlConfig):
    """Contrastive learning on <EOS> embeddings (VLM2Vec's recipe where CoCoA is silent)."""

    steps: int = Field(100, ge=0)
    learning_rate: float = Field(5e-5, gt=0)
    temperature: float = Field(0.02, gt=0)
    hard_negatives: int = Field(1, ge=0, description="hard negatives per query taken from the data")
    in_batch_negatives: bool = True
    symmetric: bool = Field(False, description="also score targets against queries (CLIP-style)")
    content_attention: Attention = "causal"
    grad_cache: bool = Field(
        True, description="with gradient accumulation, in-batch negatives span the whole accumulated batch "
        "(GradCache: embeddings first without gradients, then each micro-batch backpropagates its share)")
    gather_across_devices: bool = Field(True, description="in-batch negatives from every process's batch")
    normalize: bool = True


class OptimSettings(YamlConfig):
    batch_size: int = Field(8, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="decay after warm-up, over each stage's steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the schedule's floor, as a fraction of the peak")
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0


class ContrastiveSubset(YamlConfig):
    """One subset of stage 3's training mix (embedkit.cocoa.mix)."""

    source: str = Field(..., description="jsonl, parquet or hf:NAME[/CONFIG][:SPLIT] in MMEB-train form")
    cap: int | None = Field(None, gt=0, description="keep the first `cap` rows (VLM2Vec's "
                            "num_sample_per_subset); none: all")
    weight: float = Field(1.0, gt=0, description="entries per pass over the mix = round(weight x kept rows)")


class DataSettings(YamlConfig):
    pretrain: str | list[str] | None = Field(
        None, description="jsonl/parquet/hf:NAME[/CONFIG][:SPLIT] (or a list of them) of {text, image, "
        "description} (text or image may be missing) or MMEB-train rows (each side one input)")
    contrastive: str | list[ContrastiveSubset] | None = Field(
        None, description="one jsonl/parquet/hf:... in MMEB-train form (qry, qry_image_path, pos_text, "
        "pos_image_path, neg_text, neg_image_path), read whole; or a list of subsets with caps and "
        "weights, read row by row as batches need them")
    image_base_dir: str | None = Field(None, description="relative image paths are read from here")


class RunSettings(YamlConfig):
    output_dir: str = "runs/cocoa"
    save_every: int = Field(50, gt=0)
    log_every: int = Field(10, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    device: str = "auto"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


class CocoaConfig(YamlConfig):
    model: ModelSettings
    data: DataSettings = DataSettings()
    stage1: Stage1Settings = Stage1Settings()
    stage2: Stage2Settings = Stage2Settings()
    stage3: Stage3Settings = Stage3Settings()
    optim: OptimSettings = OptimSettings()
    run: RunSettings = RunSettings()

    @model_validator(mode="after")
    def _check(self) -> CocoaConfig:
        if (self.model.min_pixels and self.model.max_pixels and self.model.min_pixels > self.model.max_pixels):
            raise ValueError("model.min_pixels is larger than model.max_pixels")
        if isinstance(self.data.contrastive, list) and not self.data.contrastive:
            raise ValueError("data.contrastive is an empty list of subsets")
        if self.model.dtype in ("bfloat16", "float16") and self.model.lora is None:
            raise ValueError(f"model.dtype {self.model.dtype} with full fine-tuning trains without fp32 master "
                             "weights; use dtype: float32 with run.mixed_precision: bf16, or add a model.lora block")
        return self

    @property
    def weights_dtype(self) -> str:
        """The dtype weights are loaded in: `auto` is bfloat16 on a GPU with LoRA, float32 otherwise."""
        if self.model.dtype != "auto":
            return self.model.dtype
        import torch

        gpu = torch.cuda.is_available() and self.run.device != "cpu"
        return "bfloat16" if gpu and self.model.lora is not None else "float32"
