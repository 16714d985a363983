"""Sentence-transformers encoders with the settings an index must remember."""

from embedkit.encoding.config import DEFAULT_MODEL, EncoderConfig, EncoderSpec
from embedkit.encoding.device import pick_device
from embedkit.encoding.encoder import Encoder
from embedkit.encoding.models import load_sentence_transformer, resolve_model, weights_fingerprint

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
