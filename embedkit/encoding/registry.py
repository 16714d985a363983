"""Query encoders by family, so an index can rebuild whatever encoded its documents.

A family names a class with `from_spec(spec, *, model_path, device, batch_size, backend)` whose result has
`encode_queries(list[str]) -> np.ndarray`. Entries are lazy: a text-only install never imports the
multimodal stack, and listing the families imports nothing.
"""

from __future__ import annotations

from typing import Any

from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding.config import Backend, EncoderSpec
from embedkit.registry import Registry

ENCODER_FAMILIES: Registry[Any] = Registry("encoder family")
ENCODER_FAMILIES.add("sentence-transformers", "embedkit.encoding.encoder:Encoder")
ENCODER_FAMILIES.add("qwen-vl", "embedkit.multimodal.embedder:MultimodalEmbedder")


def encoder_from_spec(spec: EncoderSpec, *, model_path: str | None = None, device: str = "auto",
                      batch_size: int = DEFAULT_BATCH_SIZE, backend: Backend = "torch") -> Any:
    """Rebuild the query encoder an index records; weights that differ from the recorded ones are refused.

    `backend` is what runs the model ("torch", or "onnx" where the family supports it).
    """
    family = ENCODER_FAMILIES.get(spec.family)
    return family.from_spec(spec, model_path=model_path, device=device, batch_size=batch_size, backend=backend)
