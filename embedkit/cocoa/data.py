"""Training records for CoCoA: pre-training inputs (text and/or image) and contrastive pairs.

Pre-training jsonl: one object per line with `text` (or `caption`) and/or `image` (or `image_path`,
`img_path`), and optionally `description` (or `target`): a description of the image that stage 2
reconstructs instead of the caption (`stage2.text_target: description`); rows in MMEB-train's layout give
one input per side (data/cocoa/README.md). Contrastive jsonl: MMEB-train's fields `qry`, `qry_image_path`, `pos_text`,
`pos_image_path`, `neg_text`, `neg_image_path` (Phi-3-V placeholders such as `<|image_1|>` are dropped:
images are placed by the sequence builder), plus optional `qry_instruction` / `pos_instruction`.
Both read jsonl, parquet (MMEB-train ships as parquet) or a hub split (`hf:TIGER-Lab/MMEB-train/
ImageNet_1K:original`); images may be paths (under `data.image_base_dir`) or the hub's decoded images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


QUERY_TEXT, QUERY_IMAGE = ("qry", "qry_text", "query"), ("qry_image_path", "qry_img_path")
POSITIVE_TEXT, POSITIVE_IMAGE = ("pos_text",), ("pos_image_path", "pos_img_path")
QUERY_COLUMNS = QUERY_TEXT + QUERY_IMAGE
POSITIVE_COLUMNS = POSITIVE_TEXT + POSITIVE_IMAGE


def read_pretrain_records(source) -> list[MultimodalInput]:
    """Inputs to reconstruct; each needs text or an image. `source` is one jsonl / parquet / `hf:` split or a
    list of them (read one after the other). Rows in MMEB-train's layout (qry, qry_image_path, pos_text,
    pos_image_path) give one input per side, so the contrastive data can be pre-trained on as well."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    records = []
    for path in sources:
        found = 0
        for number, record in iter_rows(path):
            inputs = _pretrain_inputs(record)
            if not inputs:
                raise DataFormatError("a record needs 'text' or 'image' (or MMEB-train's qry / pos_text / "
                                      "qry_image_path / pos_image_path)", path=path, line=number,
                                      fields_found=record.keys())
            records += inputs
            found += 1
        if not found:
            raise DataFormatError("no records", path=path)
    return records


def _pretrain_inputs(record: dict) -> list[MultimodalInput]:
    text = clean_text(_first(record, "text", "caption", "contents"))
    image = _first(record, "image", "image_path", "img_path")
    if text is not None or image is not None:
        description = clean_text(_first(record, "description", "target"))
        return [MultimodalInput(text=text, image=image, instruction=record.get("instruction"),
                                description=description)]
    # MMEB-train rows: the query side and the positive side are two inputs; their instructions stay with them.
    sides = [_side(record, QUERY_TEXT, QUERY_IMAGE, "qry_instruction"),
             _side(record, POSITIVE_TEXT, POSITIVE_IMAGE, "pos_instruction")]
    return [side for side in sides if side is not None]


def _side(record: dict, text_names: tuple[str, ...], image_names: tuple[str, ...],
          instruction: str) -> MultimodalInput | None:
    """One side of an MMEB-train row (query or positive), or None when it has neither text nor image."""
    text = clean_text(_first(record, *text_names))
    image = _first(record, *image_names)
    if text is None and image is None:
        return None
    return MultimodalInput(text=text, image=image, instruction=record.get(instruction))


def pair_from_row(record: dict, path, number: int) -> ContrastivePair:
    """One query / positive / hard-negatives triple from a row in MMEB-train's field names."""
    query = _side(record, QUERY_TEXT, QUERY_IMAGE, "qry_instruction")
    positive = _side(record, POSITIVE_TEXT, POSITIVE_IMAGE, "pos_instruction")
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
