"""Qwen2-VL / Qwen2.5-VL embedders: sequences with segment labels, images, last-token pooling, MMEB eval."""

from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig
from embedkit.multimodal.loading import LoadedVLM, load_vlm
from embedkit.multimodal.sequence import EncodedBatch, MultimodalInput, Segment, encode_batch

__all__ = ["EncodedBatch", "LoadedVLM", "MultimodalEmbedder", "MultimodalEmbedderConfig", "MultimodalInput",
           "Segment", "encode_batch", "load_vlm"]
