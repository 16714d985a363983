"""Embed text, images, or both with a Qwen2-VL / Qwen2.5-VL model by last-token (<EOS>) pooling.

    embedder = MultimodalEmbedder(MultimodalEmbedderConfig(model="Qwen/Qwen2-VL-2B-Instruct"))
    vectors = embedder.encode([MultimodalInput(image="cat.jpg"), MultimodalInput(text="a cat")])
    q = embedder.encode_queries(["a red circle"], instruction="Find an image that matches the caption.")

Every input ends with the <EOS> token and its last hidden state is the embedding (VLM2Vec's last-token
pooling). The pooled position is found from the attention mask, so left and right padding give the same
vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from embedkit.multimodal.loading import LoadedVLM, load_vlm, pick_device
from embedkit.multimodal.sequence import MultimodalInput, VisionTokens, encode_batch, last_token_index

EMBEDDER_SETTINGS = "embedkit_embedder.json"  # written beside a trained model: its pooling settings


class MultimodalEmbedderConfig(BaseModel):
    """How to embed: the model and the reading and pooling settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str = "sdpa"
    max_length: int = 512
    padding_side: Literal["left", "right"] = "left"
    batch_size: int = 8
    normalize: bool = True
    eos_token: str = "<|endoftext|>"
    content_attention: Literal["causal", "bidirectional"] = "causal"
    query_instruction: str | None = None
    document_instruction: str | None = None
    image_base_dir: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    text_reserve: int = 16


class MultimodalEmbedder:
    """Pooled <EOS> embeddings of a vision-language model."""

    def __init__(self, config: MultimodalEmbedderConfig, loaded: LoadedVLM | None = None) -> None:
        config = _with_saved_settings(config)
        self.config = config
        device = pick_device(config.device)
        self.vlm = loaded or load_vlm(config.model, device=device, dtype=config.dtype,
                                      attn_implementation=config.attn_implementation)
        self.tokens = VisionTokens.from_tokenizer(self.vlm.tokenizer, config.eos_token)

    @property
    def model(self):
        return self.vlm.model

    @property
    def dimension(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def spec(self):
        """An `EncoderSpec` for index manifests: what produced the vectors (weights fingerprint included)."""
        from embedkit.encoding.config import EncoderSpec
        from embedkit.encoding.models import weights_fingerprint

        return EncoderSpec(
            family="qwen-vl",
            model=self.config.model,
            fingerprint=weights_fingerprint(self.model),
            pooling="last-token",
            normalize=self.config.normalize,
            query_prefix=self.config.query_instruction or "",
            passage_prefix=self.config.document_instruction or "",
            max_length=self.config.max_length,
            dim=self.dimension,
        )

    @property
    def fingerprint(self) -> str:
        from embedkit.encoding.models import weights_fingerprint

        return weights_fingerprint(self.model)

    @classmethod
    def from_spec(cls, spec, *, model_path: str | None = None, device: str = "auto",
                  batch_size: int = 8, backend: str = "torch") -> MultimodalEmbedder:
        """Rebuild the query embedder an index was built with (see `embedkit.encoding.registry`)."""
        from embedkit.errors import EmbedkitError, ModelMismatchError

        if backend != "torch":
            raise EmbedkitError(f"Qwen-VL embedders run on torch only (asked for the {backend} backend)")

        embedder = cls(MultimodalEmbedderConfig(
            model=model_path or spec.model, device=device, batch_size=batch_size, normalize=spec.normalize,
            max_length=spec.max_length or 512, query_instruction=spec.query_prefix or None,
            document_instruction=spec.passage_prefix or None,
        ))
        if embedder.fingerprint != spec.fingerprint:
            raise ModelMismatchError(
                f"model '{model_path or spec.model}' has weights fingerprint {embedder.fingerprint}, but the index "
                f"was built with '{spec.model}' (fingerprint {spec.fingerprint})"
            )
        return embedder

    def encode_batch_tensor(self, items: Sequence[MultimodalInput]):
        """Pooled embeddings of one batch as a tensor with gradients (used in training)."""
        import torch.nn.functional as F

        from embedkit.cocoa.masks import build_attention_mask
        from embedkit.multimodal.forward import forward_hidden

        device = next(self.model.parameters()).device
        batch = encode_batch(
            list(items), self.vlm.tokenizer, self.vlm.image_processor, self.tokens,
            max_length=self.config.max_length, padding_side=self.config.padding_side,
            image_base_dir=self.config.image_base_dir, min_pixels=self.config.min_pixels,
            max_pixels=self.config.max_pixels, text_reserve=self.config.text_reserve,
        ).to(device)
        allowed = build_attention_mask(batch.segments, "causal", content_attention=self.config.content_attention)
        hidden = forward_hidden(self.model, batch, allowed).hidden
        rows = hidden.new_tensor(range(hidden.shape[0])).long()
        pooled = hidden[rows, last_token_index(batch.attention_mask)].float()
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def encode(self, items: Sequence[MultimodalInput | str], *, instruction: str | None = None,
               batch_size: int | None = None) -> np.ndarray:
        """Embed inputs (plain strings are text inputs); `instruction` fills in a missing one."""
        import torch

        prepared = [_as_input(item, instruction) for item in items]
        size = batch_size or self.config.batch_size
        chunks = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(prepared), size):
                    chunks.append(self.encode_batch_tensor(prepared[start:start + size]).cpu().numpy())
        finally:
            self.model.train(was_training)
        if not chunks:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)

    def encode_queries(self, items: Sequence[MultimodalInput | str], instruction: str | None = None) -> np.ndarray:
        return self.encode(items, instruction=instruction or self.config.query_instruction)

    def encode_documents(self, items: Sequence[MultimodalInput | str],
                         instruction: str | None = None) -> np.ndarray:
        return self.encode(items, instruction=instruction or self.config.document_instruction)


def _with_saved_settings(config: MultimodalEmbedderConfig) -> MultimodalEmbedderConfig:
    """Settings a trained model was saved with fill in what the caller did not set explicitly."""
    import json

    saved = Path(config.model) / EMBEDDER_SETTINGS
    if not saved.is_file():
        return config
    values = json.loads(saved.read_text(encoding="utf-8"))
    update = {key: value for key, value in values.items()
              if key in MultimodalEmbedderConfig.model_fields and key not in config.model_fields_set}
    return config.model_copy(update=update)


def _as_input(item: MultimodalInput | str | Path, instruction: str | None) -> MultimodalInput:
    if isinstance(item, str):
        return MultimodalInput(text=item, instruction=instruction)
    if isinstance(item, Path):  # a path is an image file
        return MultimodalInput(image=str(item), instruction=instruction)
    if instruction and not item.instruction:
        return item.model_copy(update={"instruction": instruction})
    return item
