"""Load a Qwen2-VL / Qwen2.5-VL checkpoint (local path or hub id) with its tokenizer and image processor.

The image processor is transformers' PIL backend (`Qwen2VLImageProcessorPil`): the default "fast" one
imports torchvision, which CPU machines here cannot install, and the PIL one gives the same patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError, ModelUnavailableError

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def model_class_for(model_type: str):
    """The transformers class (with LM head, needed for reconstruction) for a config's `model_type`."""
    import transformers

    name = MODEL_CLASSES.get(model_type)
    if name is None:
        raise EmbedkitError(
            f"model type {model_type!r} is not supported; embedkit's multimodal embedder takes "
            f"{', '.join(sorted(MODEL_CLASSES))}"
        )
    return getattr(transformers, name)


@dataclass
class LoadedVLM:
    """A model with what it needs to read inputs."""

    model: Any
    tokenizer: Any
    image_processor: Any
    source: str

    @property
    def config(self):
        return self.model.config


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError as error:
        raise EmbedkitError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from error


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_vlm(name_or_path: str | Path, *, device: str = "cpu", dtype: str = "float32",
             attn_implementation: str = "sdpa") -> LoadedVLM:
    """Load model, tokenizer and image processor from a local folder or a hub id."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from embedkit.encoding.models import resolve_model

    source = resolve_model(str(name_or_path))  # recovers a model folder left mid-swap by a killed writer
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise ModelUnavailableError(f"cannot load model {source!r}: {error}") from error
    cls = model_class_for(config.model_type)
    model = cls.from_pretrained(source, dtype=resolve_dtype(dtype, device),
                                attn_implementation=attn_implementation)
    model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(source)
    return LoadedVLM(model=model, tokenizer=tokenizer, image_processor=image_processor, source=source)


def unwrap(model):
    """The `...ForConditionalGeneration` under a peft or accelerate wrapper."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module") and not hasattr(inner, "lm_head"):
            inner = inner.module
        else:
            break
    return inner
