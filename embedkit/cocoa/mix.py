"""Stage 3's training mix: several contrastive subsets, each capped and weighted, read row by row.

VLM2Vec trains on MMEB-train's 20 subsets, taking the first `num_sample_per_subset` rows of each
(`load_dataset(..., split="original[:N]")`) and shuffling their union. `ContrastiveMix` does the same from
`data.contrastive` entries:

    mix = ContrastiveMix.open([ContrastiveSubset(source="hf:TIGER-Lab/MMEB-train/MSCOCO_i2t:original",
                                                 cap=50000)])
    len(mix); mix[123]          # a ContrastivePair, read and built only when a batch asks for it

A subset keeps its first `cap` rows (all without a cap); its `weight` scales how many entries it puts in
one pass over the mix: round(weight x kept rows), going through its rows in order and round again when
the weight is above 1. Rows stay where they are (parquet and hub splits as memory-mapped Arrow datasets,
which `datasets` writes once into its cache; jsonl files read at byte offsets), so rows and images are
decoded one batch at a time, never all at once. Column names are checked
when the mix opens; a row that cannot be read is refused with its file and line when it is reached.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit.cocoa.config import ContrastiveSubset
from embedkit.cocoa.data import POSITIVE_COLUMNS, QUERY_COLUMNS, ContrastivePair, pair_from_row
from embedkit.errors import DataFormatError
from embedkit.training.sources import is_hub, parse_hub_spec


class _Rows:
    """Random access to the rows of one source, without holding them decoded in memory."""

    def __init__(self, source: str, cap: int | None) -> None:
        self.source = source
        if is_hub(source):
            self._table = _hub_table(source, cap)
            self.columns = list(self._table.column_names)
            self._count = len(self._table)
        elif Path(source).suffix == ".parquet":
            self._table = _parquet_table(Path(source))
            self.columns = list(self._table.column_names)
            self._count = len(self._table)
        else:
            self._table = None
            self._offsets, self._lines = _line_offsets(Path(source), cap)
            self.columns = list(self._row(0)) if self._offsets else []
            self._count = len(self._offsets)
        if cap is not None:
            self._count = min(self._count, cap)

    def __len__(self) -> int:
        return self._count

    def _row(self, index: int) -> dict[str, Any]:
        if self._table is None:
            with open(self.source, "rb") as handle:
                handle.seek(self._offsets[index])
                line = handle.readline()
            try:
                return json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"not valid JSON: {error.msg}", path=self.source,
                                      line=self.line(index)) from None
        return dict(self._table[index])  # a memory-mapped datasets.Dataset: decodes this row only

    def line(self, index: int) -> int:
        """The row's line in a jsonl file (blank lines counted), its row number otherwise."""
        return self._lines[index] if self._table is None else index + 1

    def pair(self, index: int) -> ContrastivePair:
        return pair_from_row(self._row(index), self.source, self.line(index))


def _hub_table(source: str, cap: int | None):
    """A hub split (or a local folder `datasets` reads), first `cap` rows, as VLM2Vec slices it."""
    from datasets import load_dataset

    spec = parse_hub_spec(source)
    split = f"{spec.split}[:{cap}]" if cap is not None else spec.split
    try:
        return load_dataset(spec.name, spec.config, split=split)
    except Exception as error:  # noqa: BLE001 - offline, unknown name, missing split: all the user's to fix
        raise DataFormatError(f"cannot load the hub dataset: {type(error).__name__}: {error}",
                              path=source) from None


def _parquet_table(path: Path):
    """A local parquet file as a memory-mapped Arrow dataset (`datasets` converts it once into its cache, as
    it does the hub's parquet), so rows are not held decompressed in memory."""
    from datasets import Dataset

    if not path.is_file():
        raise DataFormatError("file not found", path=path)
    try:
        return Dataset.from_parquet(str(path))
    except Exception as error:  # noqa: BLE001 - pyarrow/datasets raise several types for unreadable files
        raise DataFormatError(f"not a readable parquet file: {type(error).__name__}: {error}", path=path) from None


def _line_offsets(path: Path, cap: int | None) -> tuple[list[int], list[int]]:
    """Byte offsets and line numbers of the non-blank lines of a jsonl file (the first `cap`)."""
    if not path.is_file():
        raise DataFormatError("file not found", path=path)
    offsets, lines, position = [], [], 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                offsets.append(position)
                lines.append(number)
                if cap is not None and len(offsets) >= cap:
                    break
            position += len(line)
    return offsets, lines


class ContrastiveMix(Sequence):
    """The entries of one pass over weighted, capped subsets; `mix[i]` reads and builds one pair."""

    def __init__(self, subsets: list[_Rows], weights: list[float]) -> None:
        self.subsets = subsets
        self.sizes = [round(weight * len(rows)) for rows, weight in zip(subsets, weights, strict=True)]
        self._starts = [0]
        for size in self.sizes:
            self._starts.append(self._starts[-1] + size)

    @classmethod
    def open(cls, entries: Sequence[ContrastiveSubset]) -> ContrastiveMix:
        """Open every subset and check its columns; refuse an empty one."""
        subsets = []
        for entry in entries:
            rows = _Rows(entry.source, entry.cap)
            if len(rows) == 0:
                raise DataFormatError("no rows", path=entry.source)
            for what, names in (("query", QUERY_COLUMNS), ("positive", POSITIVE_COLUMNS)):
                if not set(names) & set(rows.columns):
                    raise DataFormatError(f"no {what} column: needs one of {', '.join(names)}",
                                          path=entry.source, fields_found=rows.columns)
            subsets.append(rows)
        mix = cls(subsets, [entry.weight for entry in entries])
        for entry, size in zip(entries, mix.sizes, strict=True):
            if size == 0:  # never drop a subset silently
                raise DataFormatError(f"weight {entry.weight} leaves none of its rows in the training mix",
                                      path=entry.source, field="data.contrastive")
        return mix

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> ContrastivePair:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        which = bisect_right(self._starts, index) - 1
        rows = self.subsets[which]
        return rows.pair((index - self._starts[which]) % len(rows))

    def composition(self) -> dict[str, int]:
        """Entries per subset in one pass (what the trainer's sampler draws from)."""
        return {rows.source: size for rows, size in zip(self.subsets, self.sizes, strict=True)}
