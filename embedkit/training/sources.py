"""Where training and evaluation rows come from: jsonl, parquet (MMEB-train ships as parquet) or the hub.

    iter_rows("train.jsonl")                       # (line number, record)
    iter_rows("train.parquet")                     # (row number, record), streamed in batches
    iter_rows("hf:BAAI/bge-m3-data")               # the hub dataset's train split, through `datasets`
    iter_rows("hf:TIGER-Lab/MMEB-train/ImageNet_1K:original")   # a config and a split

`hf:NAME[/CONFIG][:SPLIT]`: NAME is `org/name` (or a local folder `datasets` can read); SPLIT defaults to
`train`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError

HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class HubSpec:
    name: str
    config: str | None
    split: str


def is_hub(spec: str | Path) -> bool:
    return str(spec).startswith(HUB_PREFIX)


def parse_hub_spec(spec: str, default_split: str = "train") -> HubSpec:
    """`hf:org/name[/config][:split]` -> HubSpec; a local folder after `hf:` is passed to `datasets` as is."""
    body = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    name, sep, split = body.rpartition(":") if ":" in body else (body, "", "")
    if not sep:
        name, split = body, default_split
    if not name or not split:
        raise DataFormatError(f"expected hf:NAME[/CONFIG][:SPLIT], got {spec!r}", field="path")
    config = None
    if not Path(name).exists():
        parts = name.split("/")
        if len(parts) == 3:
            name, config = "/".join(parts[:2]), parts[2]
        elif len(parts) > 3:
            raise DataFormatError(f"expected hf:ORG/NAME[/CONFIG][:SPLIT], got {spec!r}", field="path")
    return HubSpec(name, config, split)


def iter_rows(source: str | Path, *, default_split: str = "train") -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) pairs of a jsonl file, a parquet file or a hub dataset split."""
    text = str(source)
    if is_hub(text):
        yield from _hub_rows(parse_hub_spec(text, default_split), text)
        return
    path = Path(source)
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    from embedkit.data import iter_json_lines

    yield from iter_json_lines(path)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataFormatError("file not found", path=path)
    try:
        handle = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise DataFormatError(f"not a readable parquet file: {error}", path=path) from None
    number = 0
    for batch in handle.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _hub_rows(spec: HubSpec, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        rows = load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as error:  # noqa: BLE001 - offline, unknown name, missing split: all the user's to fix
        raise DataFormatError(f"cannot load the hub dataset: {type(error).__name__}: {error}", path=text) from None
    for number, record in enumerate(rows, 1):
        yield number, dict(record)
