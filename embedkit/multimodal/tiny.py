"""Tiny random-init Qwen2-VL / Qwen2.5-VL models built offline, for tests, demos and CPU benchmarks.

They have the real architectures (transformers' classes, M-RoPE, the vision tower and merger), a byte-level
BPE tokenizer trained locally with the Qwen special tokens, and a PIL image processor, so every code path a
real checkpoint takes runs on them. Usage:

    path = build_tiny_vlm("/tmp/tiny-qwen2vl", family="qwen2-vl")
    embedder = MultimodalEmbedder(MultimodalEmbedderConfig(model=str(path)))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from embedkit.errors import EmbedkitError

Family = Literal["qwen2-vl", "qwen2.5-vl"]
#: Written into every tiny model folder: its settings, and the proof that a folder is one (so rebuilding
#: replaces an earlier tiny model but never a user's folder or a trained model).
TINY_RECORD = "embedkit_tiny_model.json"

# Qwen's special tokens, in the order the real vocabularies list them, plus a mask token for CoCoA stage 1.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|mask|>",
]

_TOKENIZER_CORPUS = """\
a red circle on the left . a blue square on the right . a green triangle at the top .
a yellow star at the bottom . the white strawberry is small . the red strawberry is sweet .
Alice hit Bob . Bob hit Alice . Carol paid Dave 42 dollars in 2019 . Dave paid Carol 17 euros .
Paris is the capital of France . Berlin is in Germany . the cat sat on the mat near the door .
Represent the given image . Find an image that matches the caption . Represent the caption .
query: what is shown ? passage: a photo of shapes and colours in the centre of the picture .
one two three four five six seven eight nine ten hundred thousand million 0 1 2 3 4 5 6 7 8 9
purple orange black grey pink brown cyan magenta small large big tiny upper lower middle corner
"""


def build_tokenizer(extra_text: str = "", vocab_size: int = 512):
    """A byte-level BPE tokenizer (any text encodes, no unknown tokens) with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (_TOKENIZER_CORPUS + extra_text).splitlines()
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    return wrapped


def tiny_config(family: Family, vocab_size: int, token_ids: dict[str, int], *, hidden_size: int = 64,
                layers: int = 2, vision_depth: int = 1, patch_size: int = 4, merge_size: int = 2):
    """A Qwen2-VL or Qwen2.5-VL config small enough to train on a laptop CPU."""
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width; sums to head_dim / 2
    text: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|endoftext|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    ids: dict[str, Any] = dict(
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
    )
    if family == "qwen2-vl":
        from transformers import Qwen2VLConfig

        vision: dict[str, Any] = dict(depth=vision_depth, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
                      patch_size=patch_size, spatial_merge_size=merge_size, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=hidden_size, patch_size=patch_size, spatial_merge_size=merge_size,
                      temporal_patch_size=2, window_size=patch_size * merge_size * 2,
                      fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    raise EmbedkitError(f"unknown model family {family!r}; choose qwen2-vl or qwen2.5-vl")


def build_tiny_vlm(out: str | Path, family: Family = "qwen2-vl", *, seed: int = 0, hidden_size: int = 64,
                   layers: int = 2, vision_depth: int = 1, image_pixels: int = 16 * 16,
                   extra_text: str = "") -> Path:
    """Write a random-init model, tokenizer and image processor to `out`; load it like any local model.

    `image_pixels` bounds the resized image area (16*16 with patch 4 and merge 2 gives 4 image tokens). An
    earlier tiny model at `out` is replaced; any other non-empty folder is refused (`EmbedkitError`).
    """
    import json

    import torch
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from embedkit.io import atomic_directory, check_replaceable
    from embedkit.multimodal.loading import model_class_for

    out = Path(out)
    check_replaceable(out, overwrite=True, marker=TINY_RECORD, what="tiny model")  # refuse before the work
    tokenizer = build_tokenizer(extra_text)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = tiny_config(family, len(tokenizer), token_ids, hidden_size=hidden_size, layers=layers,
                         vision_depth=vision_depth)
    torch.manual_seed(seed)
    model = model_class_for(config.model_type)(config)
    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        size={"shortest_edge": (patch * merge) ** 2, "longest_edge": image_pixels},
    )
    settings = dict(family=family, seed=seed, hidden_size=hidden_size, layers=layers, vision_depth=vision_depth,
                    image_pixels=image_pixels, extra_text=extra_text)
    with atomic_directory(out, overwrite=True, marker=TINY_RECORD, what="tiny model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / TINY_RECORD).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return out


_CACHE: dict[tuple, Path] = {}


def cached_tiny_vlm(family: Family = "qwen2-vl", **options) -> Path:
    """`build_tiny_vlm` once per process and option set, into a temporary folder (tests, examples)."""
    import tempfile

    key = (family, tuple(sorted(options.items())))
    if key not in _CACHE or not (_CACHE[key] / "config.json").exists():
        folder = Path(tempfile.mkdtemp(prefix="embedkit-tiny-vlm-"))
        _CACHE[key] = build_tiny_vlm(folder / "model", family, **options)
    return _CACHE[key]
