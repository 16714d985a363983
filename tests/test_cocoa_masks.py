"""CoCoA attention masks, element by element: which token sees which, with padding and image tokens."""

from __future__ import annotations

import pytest
import torch

from embedkit.cocoa.masks import additive_mask, build_attention_mask, render_mask
from embedkit.errors import EmbedkitError
from embedkit.multimodal.sequence import Segment

PAD, INS, TXT, VIS, IMG, EOS, TGT, SLOT, DEC = (int(s) for s in Segment)


def grid(*rows: str) -> torch.Tensor:
    return torch.tensor([[cell == "#" for cell in row] for row in rows])


def mask(segments: list[int], stage: str, **options) -> torch.Tensor:
    return build_attention_mask(torch.tensor([segments]), stage, **options)[0]


def test_causal_with_left_padding():
    got = mask([PAD, PAD, TXT, TXT, EOS], "causal")
    assert torch.equal(got, grid(
        "#....",  # PAD sees only itself
        ".#...",
        "..#..",  # first real token: itself, never the padding
        "..##.",
        "..###",  # <EOS> sees all real tokens before it
    ))


def test_causal_with_right_padding_and_image():
    got = mask([VIS, IMG, IMG, VIS, TXT, EOS, PAD], "causal")
    assert torch.equal(got, grid(
        "#......",
        "##.....",
        "###....",
        "####...",
        "#####..",
        "######.",
        "......#",
    ))


def test_causal_bidirectional_content_option():
    got = mask([PAD, TXT, TXT, EOS], "causal", content_attention="bidirectional")
    assert torch.equal(got, grid("#...", ".###", ".###", ".###"))


def test_stage1_bidirectional_with_image_and_right_padding():
    got = mask([INS, VIS, IMG, IMG, VIS, TXT, EOS, PAD], "bidirectional")
    assert torch.equal(got, grid(*(["#######."] * 7 + [".......#"])))


def test_stage2_eos_bridge_left_padding_image_text_and_slots():
    segments = [PAD, INS, VIS, IMG, IMG, VIS, TXT, EOS, TGT, TGT, SLOT, SLOT]
    got = mask(segments, "eos_bridge")
    assert torch.equal(got, grid(
        "#...........",  # PAD
        ".#..........",  # instruction
        ".##.........",  # <|vision_start|>
        ".###........",  # image token 1
        ".####.......",  # image token 2
        ".#####......",  # <|vision_end|>
        ".######.....",  # text
        ".#######....",  # <EOS>: all content and itself
        ".......##...",  # target 1: <EOS> and itself, no content
        ".......###..",  # target 2: <EOS>, target 1, itself
        ".......#..##",  # image slot: <EOS> and every slot, no content, no text target
        ".......#..##",
    ))


def test_stage2_bidirectional_content_causal_slots_right_padding():
    got = mask([TXT, TXT, EOS, TGT, TGT, PAD], "eos_bridge", content_attention="bidirectional")
    assert torch.equal(got, grid("##....", "##....", "###...", "..##..", "..###.", ".....#"))
    got = mask([IMG, IMG, EOS, SLOT, SLOT], "eos_bridge", image_slot_attention="causal")
    assert torch.equal(got, grid("#....", "##...", "###..", "..##.", "..###"))


def test_batch_rows_are_independent():
    batch = torch.tensor([[PAD, TXT, EOS, TGT], [TXT, TXT, EOS, TGT]])
    got = build_attention_mask(batch, "eos_bridge")
    assert torch.equal(got[0], grid("#...", ".#..", ".##.", "..##"))
    assert torch.equal(got[1], grid("#...", "##..", "###.", "..##"))


def test_targets_are_refused_outside_stage2_and_unknown_stages():
    with pytest.raises(EmbedkitError):
        mask([TXT, EOS, TGT], "bidirectional")
    with pytest.raises(EmbedkitError):
        mask([TXT, EOS, TGT], "causal")
    with pytest.raises(EmbedkitError, match="unknown attention stage"):
        mask([TXT, EOS], "sideways")


def test_additive_mask_blocks_with_dtype_minimum():
    allowed = mask([PAD, TXT, EOS], "causal")
    added = additive_mask(allowed.unsqueeze(0), torch.float32)
    assert added.shape == (1, 1, 3, 3)
    assert added[0, 0, 2, 1] == 0 and added[0, 0, 1, 2] == torch.finfo(torch.float32).min


def test_render_marks_visible_keys():
    segments = torch.tensor([PAD, TXT, EOS, TGT])
    text = render_mask(build_attention_mask(segments, "eos_bridge")[0], segments, ["", "a", "<e>", "a"])
    rows = text.splitlines()[2:]
    assert rows[3].endswith("|..##") and rows[0].endswith("|#...")
