"""Pydantic records as JSON lines (trajectories, training pairs, …), validated line by line.

    write_records("runs/pairs.jsonl", pairs)
    pairs = read_records("runs/pairs.jsonl", TrainingPair, what="training pair")
    datasets.load_dataset("json", data_files=["a.jsonl", "b.jsonl"], features=dataset_features(TrainingPair))
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

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


_SCALARS = {str: "string", int: "int64", float: "float64", bool: "bool"}


def dataset_features(model: type[BaseModel]) -> Any:
    """The `datasets.Features` of `model`'s records: `load_dataset("json", data_files=…, features=…)`.

    Without them `datasets` takes each column's type from the first chunk it reads, and a field that is null
    all through it (a trajectory's `error` in a run without failures) cannot hold a value later: several files,
    or one long file, fail with "Couldn't cast array of type string to null" (huggingface/datasets#7092, #7222).
    """
    import datasets

    return datasets.Features(_feature(model))


def _feature(annotation: Any) -> Any:
    import datasets

    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kinds = [arg for arg in args if arg is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"no datasets feature for the union {annotation}")
        return _feature(kinds[0])
    if origin is Literal:
        return _feature(type(args[0]))
    if origin in (list, tuple):
        return datasets.List(_feature(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: _feature(field.annotation) for name, field in annotation.model_fields.items()}
    if dataclasses.is_dataclass(annotation):
        hints = get_type_hints(annotation)
        return {field.name: _feature(hints[field.name]) for field in dataclasses.fields(annotation)}
    if annotation in _SCALARS:
        return datasets.Value(_SCALARS[annotation])
    raise TypeError(f"no datasets feature for {annotation}")
