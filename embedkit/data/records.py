"""Pydantic records as JSON lines (trajectories, training pairs, …), validated line by line.

    write_records("runs/pairs.jsonl", pairs)
    pairs = read_records("runs/pairs.jsonl", TrainingPair, what="training pair")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from embedkit.data._files import iter_json_lines
from embedkit.errors import DataFormatError
from embedkit.io import atomic_write

Record = TypeVar("Record", bound=BaseModel)


def write_records(path: str | Path, records: Iterable[BaseModel]) -> Path:
    """One JSON object per line, written atomically."""
    with atomic_write(path) as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
    return Path(path)


def read_records(path: str | Path, model: type[Record], *, what: str, allow_empty: bool = True) -> list[Record]:
    """Every line validated as `model`; the first bad line is reported with its number and field."""
    records: list[Record] = []
    for line, data in iter_json_lines(path):
        try:
            records.append(model.model_validate(data))
        except ValidationError as error:
            first = error.errors()[0]
            raise DataFormatError(f"not a {what}: {first['msg']}", path=path, line=line,
                                  field=".".join(str(part) for part in first["loc"]) or None) from None
    if not records and not allow_empty:
        raise DataFormatError(f"no {what} in file", path=path)
    return records
