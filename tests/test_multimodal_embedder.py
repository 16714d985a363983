"""Qwen2-VL / Qwen2.5-VL embedding: sequences, last-token pooling under padding, images, instructions."""

from __future__ import annotations

import base64
import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from embedkit.cocoa.masks import build_attention_mask
from embedkit.errors import DataFormatError, EmbedkitError, ModelUnavailableError
from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig
from embedkit.multimodal.forward import forward_hidden
from embedkit.multimodal.images import load_image
from embedkit.multimodal.loading import load_vlm
from embedkit.multimodal.sequence import (
    MultimodalInput,
    Segment,
    VisionTokens,
    encode_batch,
    last_token_index,
)
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)
FAMILIES = ["qwen2-vl", "qwen2.5-vl"]


def square(colour, size=16):
    return Image.new("RGB", (size, size), colour)


@functools.cache
def embedder(family: str, padding_side: str = "left") -> MultimodalEmbedder:
    config = MultimodalEmbedderConfig(model=str(cached_tiny_vlm(family)), device="cpu",
                                      padding_side=padding_side, batch_size=4)
    if padding_side == "left":
        return MultimodalEmbedder(config)
    return MultimodalEmbedder(config, loaded=embedder(family, "left").vlm)  # same weights, other padding


MIXED = [
    MultimodalInput(text="a red circle on the left"),
    MultimodalInput(image=square((255, 0, 0))),
    MultimodalInput(image=square((0, 0, 255), 24), text="blue", instruction="Represent the given image."),
    MultimodalInput(text="Alice hit Bob"),
]


def test_sequence_layout_and_segments():
    emb = embedder("qwen2-vl")
    tokenizer = emb.vlm.tokenizer
    batch = encode_batch([MIXED[2], MIXED[0]], tokenizer, emb.vlm.image_processor, emb.tokens, padding_side="right")
    row = batch.segments[0][batch.attention_mask[0].bool()].tolist()
    n_instruction = len(tokenizer("Represent the given image.", add_special_tokens=False)["input_ids"])
    n_text = len(tokenizer("blue", add_special_tokens=False)["input_ids"])
    n_image = int(batch.image_grid_thw[0].prod()) // 4  # merge 2 x 2
    assert n_image == 4  # 24 x 24 resized into at most 16 x 16 pixels: 4 x 4 patches of 4, merged 2 x 2
    assert row == ([Segment.INSTRUCTION] * n_instruction + [Segment.VISION_MARK] + [Segment.IMAGE] * n_image
                   + [Segment.VISION_MARK] + [Segment.TEXT] * n_text + [Segment.EOS])
    ids = batch.input_ids[0]
    assert int(ids[n_instruction]) == emb.tokens.vision_start
    assert (ids[batch.segments[0] == Segment.IMAGE] == emb.tokens.image_pad).all()
    assert int(ids[len(row) - 1]) == emb.tokens.eos
    # right padding: row 1 is shorter and padded at the end; last_token_index finds its <EOS>
    last = last_token_index(batch.attention_mask)
    assert batch.segments[1, last[1]] == Segment.EOS and batch.segments[1, -1] == Segment.PAD
    assert batch.mm_token_type_ids.sum() == n_image


@pytest.mark.parametrize("family", FAMILIES)
def test_custom_mask_forward_matches_transformers(family):
    """Our forward with the causal mask equals transformers' own forward (masks, M-RoPE, image scatter)."""
    emb = embedder(family)
    batch = encode_batch(MIXED[:3], emb.vlm.tokenizer, emb.vlm.image_processor, emb.tokens, padding_side="left")
    ours = forward_hidden(emb.model, batch, build_attention_mask(batch.segments, "causal")).hidden
    with torch.no_grad():
        theirs = emb.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                           mm_token_type_ids=batch.mm_token_type_ids, output_hidden_states=True).hidden_states[-1]
    real = batch.attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_and_right_padding_and_batching_give_the_same_vectors(family):
    left = embedder(family, "left").encode(MIXED)
    right = embedder(family, "right").encode(MIXED)
    alone = embedder(family, "left").encode(MIXED, batch_size=1)
    assert left.shape == (4, 64)
    np.testing.assert_allclose(left, right, atol=2e-5)
    np.testing.assert_allclose(left, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(left[0], left[3], atol=1e-3)  # different inputs, different vectors


def test_instructions_change_query_vectors():
    emb = embedder("qwen2-vl")
    plain = emb.encode_queries(["a red circle"])
    instructed = emb.encode_queries(["a red circle"], instruction="Find an image that matches the caption.")
    assert not np.allclose(plain, instructed, atol=1e-4)
    again = emb.encode([MultimodalInput(text="a red circle", instruction="Find an image that matches the caption.")])
    np.testing.assert_allclose(instructed, again, atol=1e-6)


def test_image_sources(tmp_path):
    image = square((10, 200, 30), 20)
    image.save(tmp_path / "pic.png")
    data_uri = "data:image/png;base64," + base64.b64encode((tmp_path / "pic.png").read_bytes()).decode()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pic.png"
        sources = [str(tmp_path / "pic.png"), f"file://{tmp_path / 'pic.png'}", data_uri, url, image]
        pixels = [np.asarray(load_image(source)) for source in sources]
    finally:
        server.shutdown()
    for got in pixels:
        np.testing.assert_array_equal(got, np.asarray(image))
    assert np.asarray(load_image("pic.png", base_dir=tmp_path)).shape == (20, 20, 3)
    with pytest.raises(DataFormatError, match="cannot read image"):
        load_image(str(tmp_path / "missing.png"))


def test_image_paths_embed_like_pil_images(tmp_path):
    image = square((200, 100, 0))
    image.save(tmp_path / "a.png")
    config = embedder("qwen2-vl").config.model_copy(update={"image_base_dir": str(tmp_path)})
    by_path = MultimodalEmbedder(config, loaded=embedder("qwen2-vl").vlm).encode([MultimodalInput(image="a.png")])
    by_object = embedder("qwen2-vl").encode([MultimodalInput(image=image)])
    np.testing.assert_allclose(by_path, by_object, atol=1e-6)


def test_processor_is_the_pil_one_and_torchvision_is_not_needed():
    emb = embedder("qwen2.5-vl")
    assert type(emb.vlm.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert type(emb.model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_errors():
    emb = embedder("qwen2-vl")
    with pytest.raises(EmbedkitError, match="needs text, an image"):
        emb.encode([MultimodalInput()])
    with pytest.raises(ModelUnavailableError):
        load_vlm("Qwen/Qwen2-VL-2B-Instruct")  # hub id: offline here, so a clear error
    with pytest.raises(EmbedkitError, match="has no"):
        VisionTokens.from_tokenizer(emb.vlm.tokenizer, eos_token="<|nope|>")
