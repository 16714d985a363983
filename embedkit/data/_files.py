"""Low-level line reading shared by the corpus, query and qrels readers."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def base_suffix(path: Path) -> str:
    """`.jsonl` for `x.jsonl.gz`: the format suffix under an optional compression suffix."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object is an error.

    >>> for line, record in iter_json_lines("train.jsonl"): ...
    """
    path = require_file(path, "file")
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"malformed JSON ({error.msg} at column {error.colno})", path=path, line=line_number) from None
            if not isinstance(record, dict):
                raise DataFormatError(f"expected a JSON object, got {type(record).__name__}", path=path, line=line_number)
            yield line_number, record


def iter_delimited(path: Path, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, columns); `delimiter=None` splits on any whitespace."""
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            yield line_number, (line.split(delimiter) if delimiter else line.split())


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{what} not found: {path}")
    return path
