"""Sentence-transformers encoders with the settings an index must remember.

Importing this package (or `embedkit.encoding.config`) is cheap: torch and sentence-transformers load only
when `Encoder` or one of the model helpers is first used, so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from embedkit.encoding.config import DEFAULT_MODEL, EncoderConfig, EncoderSpec

_LAZY = {
    "Encoder": "embedkit.encoding.encoder",
    "pick_device": "embedkit.encoding.device",
    "load_sentence_transformer": "embedkit.encoding.models",
    "resolve_model": "embedkit.encoding.models",
    "weights_fingerprint": "embedkit.encoding.models",
}

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "EncoderConfig",
    "EncoderSpec",
    "load_sentence_transformer",
    "pick_device",
    "resolve_model",
    "weights_fingerprint",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedkit.encoding' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
