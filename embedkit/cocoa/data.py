"""Training records for CoCoA: pre-training inputs (text and/or image) and contrastive pairs.

Pre-training jsonl: one object per line with `text` (or `caption`) and/or `image` (or `image_path`,
`img_path`), and optionally `description` (or `target`): a description of the image that stage 2
reconstructs instead of the caption (`stage2.text_target: description`). Contrastive jsonl: MMEB-train's fields `qry`, `qry_image_path`, `pos_text`,
`pos_image_path`, `neg_text`, `neg_image_path` (Phi-3-V placeholders such as `<|image_1|>` are dropped:
images are placed by the sequence builder), plus optional `qry_instruction` / `pos_instruction`.
Both read jsonl, parquet (MMEB-train ships as parquet) or a hub split (`hf:TIGER-Lab/MMEB-train/
ImageNet_1K:original`); images may be paths (under `data.image_base_dir`) or the hub's decoded images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.errors import DataFormatError
from embedkit.multimodal.sequence import MultimodalInput, clean_text
from embedkit.training.sources import iter_rows


@dataclass(frozen=True)
class ContrastivePair:
    query: MultimodalInput
    positive: MultimodalInput
    negatives: list[MultimodalInput] = field(default_factory=list)


def _first(record: dict, *names: str):
    for name in names:
        value = record.get(name)
        if value not in (None, ""):
            return value
    return None


def read_pretrain_records(path: str | Path) -> list[MultimodalInput]:
    """Inputs to reconstruct; each needs text or an image."""
    records = []
    for number, record in iter_rows(path):
        text = clean_text(_first(record, "text", "caption", "contents"))
        image = _first(record, "image", "image_path", "img_path")
        if text is None and image is None:
            raise DataFormatError("a record needs 'text' or 'image'", path=path, line=number,
                                  fields_found=record.keys())
        description = clean_text(_first(record, "description", "target"))
        records.append(MultimodalInput(text=text, image=image, instruction=record.get("instruction"),
                                       description=description))
    if not records:
        raise DataFormatError("no records", path=path)
    return records


def _side(record: dict, text_names: tuple[str, ...], image_names: tuple[str, ...], instruction: str,
          path, number: int, what: str) -> MultimodalInput | None:
    text = clean_text(_first(record, *text_names))
    image = _first(record, *image_names)
    if text is None and image is None:
        return None
    return MultimodalInput(text=text, image=image, instruction=record.get(instruction))


QUERY_COLUMNS = ("qry", "qry_text", "query", "qry_image_path", "qry_img_path")
POSITIVE_COLUMNS = ("pos_text", "pos_image_path", "pos_img_path")


def pair_from_row(record: dict, path, number: int) -> ContrastivePair:
    """One query / positive / hard-negatives triple from a row in MMEB-train's field names."""
    query = _side(record, ("qry", "qry_text", "query"), ("qry_image_path", "qry_img_path"),
                  "qry_instruction", path, number, "query")
    positive = _side(record, ("pos_text",), ("pos_image_path", "pos_img_path"), "pos_instruction",
                     path, number, "positive")
    if query is None:
        raise DataFormatError("no query: needs 'qry' text or 'qry_image_path'", path=path, line=number,
                              fields_found=record.keys())
    if positive is None:
        raise DataFormatError("no positive: needs 'pos_text' or 'pos_image_path'", path=path,
                              line=number, fields_found=record.keys())
    negatives = []
    neg_text, neg_image = record.get("neg_text"), record.get("neg_image_path")
    texts = neg_text if isinstance(neg_text, list) else [neg_text]
    images = neg_image if isinstance(neg_image, list) else [neg_image]
    for index in range(max(len(texts), len(images))):
        text = clean_text(texts[index] if index < len(texts) else None)
        image = images[index] if index < len(images) else None
        if text is not None or image not in (None, ""):
            negatives.append(MultimodalInput(text=text, image=image or None,
                                             instruction=record.get("pos_instruction")))
    return ContrastivePair(query, positive, negatives)


def read_contrastive_pairs(source) -> Sequence[ContrastivePair]:
    """Query / positive / optional hard-negative triples in MMEB-train's field names.

    `source` is one file or hub split (read whole, every row checked now), or a list of
    `ContrastiveSubset`s (or their dicts): a `ContrastiveMix` that reads rows as batches need them.
    """
    if isinstance(source, (list, tuple)):
        from embedkit.cocoa.config import ContrastiveSubset
        from embedkit.cocoa.mix import ContrastiveMix

        return ContrastiveMix.open([ContrastiveSubset.model_validate(entry) if isinstance(entry, dict) else entry
                                    for entry in source])
    pairs = [pair_from_row(record, source, number) for number, record in iter_rows(source)]
    if not pairs:
        raise DataFormatError("no pairs", path=source)
    return pairs
