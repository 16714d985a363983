"""Query encoders by family, so an index can rebuild whatever encoded its documents.

A family maps to a factory `(spec, *, model_path, device, batch_size) -> encoder` whose result has
`encode_queries(list[str]) -> np.ndarray`. Factories are imported lazily: a text-only install never
imports the multimodal stack.
"""

from __future__ import annotations

import importlib
from typing import Any

from embedkit.encoding.config import EncoderSpec
from embedkit.errors import EmbedkitError

ENCODER_FAMILIES: dict[str, str] = {
    "sentence-transformers": "embedkit.encoding.encoder:Encoder.from_spec",
    "qwen-vl": "embedkit.multimodal.embedder:MultimodalEmbedder.from_spec",
}


def encoder_from_spec(spec: EncoderSpec, *, model_path: str | None = None, device: str = "auto",
                      batch_size: int = 64) -> Any:
    """Rebuild the query encoder an index records; weights that differ from the recorded ones are refused."""
    target = ENCODER_FAMILIES.get(spec.family)
    if target is None:
        raise EmbedkitError(f"unknown encoder family '{spec.family}' (known: {', '.join(ENCODER_FAMILIES)})")
    module_name, _, attribute = target.partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    return factory(spec, model_path=model_path, device=device, batch_size=batch_size)
