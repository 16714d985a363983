"""Turn text / image / instruction inputs into token sequences with a segment label per token.

Layout of one sequence (pieces that are absent are skipped):

    [instruction] [<|vision_start|> <|image_pad|> x N <|vision_end|>] [text] <EOS> [<DEC> target ...] [slots]

N is the number of merged image patches the vision tower produces for that image. Every token carries a
`Segment` label; the CoCoA attention masks (`embedkit.cocoa.masks`) are computed from these labels alone,
so the same sequence can be read under any stage's attention rules.

`max_length` is the budget of the content (instruction + image tokens + text + <EOS>): images are
scaled down (through the processor's `max_pixels`) so that `text_reserve` tokens stay free for text,
then the text is cut to what is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from embedkit.errors import EmbedkitError


class Segment(IntEnum):
    """What a token is. Content = INSTRUCTION, TEXT, VISION_MARK and IMAGE."""

    PAD = 0
    INSTRUCTION = 1
    TEXT = 2
    VISION_MARK = 3  # <|vision_start|>, <|vision_end|>
    IMAGE = 4  # <|image_pad|> placeholders, replaced by vision-tower embeddings
    EOS = 5
    TARGET = 6  # stage-2 text to reconstruct from <EOS>
    TARGET_IMAGE = 7  # stage-2 query slots that regress image patches from <EOS>
    DECODER_START = 8  # stage-2 token after <EOS> whose state predicts the first target token


_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")


def clean_text(text: str | None) -> str | None:
    """Drop MMEB/Phi-3-V image placeholders (`<|image_1|>`) and surrounding blank space; empty -> None.

    Images are placed by `encode_batch`, so datasets' inline placeholders must not reach the tokenizer.
    """
    if text is None:
        return None
    cleaned = _PLACEHOLDER.sub("", str(text)).strip()
    return cleaned or None


CONTENT_SEGMENTS = (Segment.INSTRUCTION, Segment.TEXT, Segment.VISION_MARK, Segment.IMAGE)


class MultimodalInput(BaseModel):
    """One thing to embed: text, an image (path, URL, data URI or PIL image), or both, with an instruction."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    text: str | None = None
    image: Any = None
    instruction: str | None = None
    #: CoCoA stage-2 reconstruction text (e.g. a description of the image); never part of the content.
    description: str | None = None


@dataclass
class EncodedBatch:
    """Padded model inputs plus per-token segment labels."""

    input_ids: Any  # LongTensor [B, L]
    attention_mask: Any  # LongTensor [B, L], 1 = real token
    segments: Any  # LongTensor [B, L] of Segment values
    mm_token_type_ids: Any  # IntTensor [B, L]: 0 text, 1 image (M-RoPE needs it)
    pixel_values: Any = None  # FloatTensor [num_patches, C*T*P*P] for all images, in batch order
    image_grid_thw: Any = None  # LongTensor [num_images, 3]
    image_rows: list[int] = field(default_factory=list)  # batch row of each image

    def to(self, device) -> EncodedBatch:
        moved = {name: (value.to(device) if hasattr(value, "to") else value)
                 for name, value in self.__dict__.items()}
        return EncodedBatch(**moved)

    @property
    def has_images(self) -> bool:
        return self.pixel_values is not None


@dataclass(frozen=True)
class VisionTokens:
    image_pad: int
    vision_start: int
    vision_end: int
    eos: int
    pad: int
    mask: int | None = None
    decoder_start: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_token: str = "<|endoftext|>",
                       mask_token: str | None = "<|mask|>",
                       decoder_start_token: str | None = None) -> VisionTokens:
        def token_id(token: str) -> int:
            value = tokenizer.convert_tokens_to_ids(token)
            if value is None or value == tokenizer.unk_token_id:
                raise EmbedkitError(f"the tokenizer has no {token!r} token")
            return int(value)

        mask = None
        if mask_token is not None:
            found = tokenizer.convert_tokens_to_ids(mask_token)
            mask = None if found is None or found == tokenizer.unk_token_id else int(found)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else token_id(eos_token)
        start = token_id(decoder_start_token) if decoder_start_token is not None else None
        if start is not None and start == token_id(eos_token):
            raise EmbedkitError("the decoder-start token must differ from the <EOS> token")
        return cls(token_id("<|image_pad|>"), token_id("<|vision_start|>"), token_id("<|vision_end|>"),
                   token_id(eos_token), int(pad), mask, start)


def encode_batch(
    items: list[MultimodalInput],
    tokenizer,
    image_processor,
    tokens: VisionTokens,
    *,
    max_length: int = 512,
    padding_side: Literal["left", "right"] = "left",
    targets: list[str | None] | None = None,
    image_target_slots: bool = False,
    image_base_dir: str | Path | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    text_reserve: int = 16,
) -> EncodedBatch:
    """Tokenize and pad `items`. `targets` appends stage-2 reconstruction text after <EOS>, opened by the
    decoder-start token when `tokens.decoder_start` is set and closed by <EOS>; `image_target_slots`
    appends one mask-token slot per image token (stage 2). Images are fitted into `max_length` (see the
    module doc) within the processor's `min_pixels`/`max_pixels`."""
    import torch

    from embedkit.multimodal.images import load_image

    instructions: list[list[int]] = []
    for item in items:
        if item.text is None and item.image is None:
            raise EmbedkitError("an input needs text, an image, or both")
        instructions.append(tokenizer(item.instruction, add_special_tokens=False)["input_ids"]
                            if item.instruction else [])
    pixel_values = grid = None
    tokens_per_image: list[int] = []
    if any(item.image is not None for item in items):
        size = image_size_limits(image_processor, max_length=max_length,
                                 instruction_tokens=max(len(i) for i in instructions),
                                 min_pixels=min_pixels, max_pixels=max_pixels, text_reserve=text_reserve)
        # The reader resizes to the bounds (qwen-vl-utils' fetch_image, or PIL with the same rule), so the
        # processor's own resize finds the target size already.
        images = [load_image(item.image, base_dir=image_base_dir, min_pixels=size["shortest_edge"],
                             max_pixels=size["longest_edge"], patch_size=int(image_processor.patch_size),
                             merge_size=int(image_processor.merge_size))
                  for item in items if item.image is not None]  # fmt: skip
        processed = image_processor(images=images, return_tensors="pt", size=size)
        pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
        merge = image_processor.merge_size
        tokens_per_image = [int(n) for n in (grid.prod(-1) // (merge * merge)).tolist()]
    if image_target_slots and tokens.mask is None:
        raise EmbedkitError("image reconstruction slots need a mask token in the tokenizer")

    rows: list[tuple[list[int], list[int]]] = []
    image_rows: list[int] = []
    image_index = 0
    for row, item in enumerate(items):
        ids: list[int] = []
        segs: list[int] = []

        def add(piece: list[int], segment: Segment, ids: list[int] = ids, segs: list[int] = segs) -> None:
            ids.extend(piece)
            segs.extend([int(segment)] * len(piece))

        if instructions[row]:
            add(instructions[row], Segment.INSTRUCTION)
        n_image = 0
        if item.image is not None:
            n_image = tokens_per_image[image_index]
            image_index += 1
            image_rows.append(row)
            add([tokens.vision_start], Segment.VISION_MARK)
            add([tokens.image_pad] * n_image, Segment.IMAGE)
            add([tokens.vision_end], Segment.VISION_MARK)
        if item.text:
            text_ids = tokenizer(item.text, add_special_tokens=False)["input_ids"]
            room = max_length - len(ids) - 1
            add(text_ids[: max(room, 0)], Segment.TEXT)
        add([tokens.eos], Segment.EOS)
        target = targets[row] if targets is not None else None
        if target:
            start = tokens.decoder_start
            if start is not None:
                add([start], Segment.DECODER_START)
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"][:max_length]
            add(target_ids + [tokens.eos], Segment.TARGET)
        if image_target_slots and n_image and tokens.mask is not None:  # checked above
            add([tokens.mask] * n_image, Segment.TARGET_IMAGE)
        rows.append((ids, segs))

    length = max(len(ids) for ids, _ in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), tokens.pad, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    segments = torch.zeros((batch, length), dtype=torch.long)
    for row, (ids, segs) in enumerate(rows):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        attention[row, span] = 1
        segments[row, span] = torch.tensor(segs)
    mm_types = (segments == int(Segment.IMAGE)).int()
    return EncodedBatch(input_ids, attention, segments, mm_types, pixel_values, grid, image_rows)


def image_size_limits(image_processor, *, max_length: int, instruction_tokens: int = 0,
                      min_pixels: int | None = None, max_pixels: int | None = None,
                      text_reserve: int = 16) -> dict[str, int]:
    """The processor's `size` ({shortest_edge: min_pixels, longest_edge: max_pixels}) for one batch:
    the configured caps, tightened so one image's tokens fit `max_length` beside the instruction, the
    two vision marks, <EOS> and `text_reserve` text tokens."""
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    defaults = getattr(image_processor, "size", None) or {}
    low = min_pixels or defaults.get("shortest_edge") or factor * factor
    high = max_pixels or defaults.get("longest_edge") or 28 * 28 * 1280
    room = max_length - instruction_tokens - 3 - text_reserve
    if room < 1:
        raise EmbedkitError(f"max_length {max_length} leaves no room for an image (instruction: "
                            f"{instruction_tokens} tokens, text_reserve: {text_reserve})")
    high = min(high, room * factor * factor)
    return {"shortest_edge": min(low, high), "longest_edge": high}


def last_token_index(attention_mask):
    """Index of each row's last real token: right for left padding, before the padding for right padding."""
    import torch

    length = attention_mask.shape[1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def eos_index(segments):
    """Index of each row's <EOS> token (the first, for sequences that carry a target after it)."""
    import torch

    is_eos = segments == int(Segment.EOS)
    if not bool(is_eos.any(dim=1).all()):
        raise EmbedkitError("a sequence has no <EOS> token")
    length = segments.shape[1]
    positions = torch.arange(length, device=segments.device).expand_as(segments)
    return torch.where(is_eos, positions, torch.full_like(positions, length)).min(dim=1).values
