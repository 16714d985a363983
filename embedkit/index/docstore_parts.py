"""A document store made of parts: SQLite files that each own a range of rows, with deleted rows hidden.

Dense segments (`embedkit.index.segments.SegmentReader`) and BM25 document-store parts (`PartReader`, recorded as
`embedkit.lexical.segments.DocstorePart` in a BM25 manifest) are both parts: a `DocStore`, the rows
[row_start, row_stop) it owns, and the set of its rows that later updates deleted. `SegmentedDocStore` reads any
list of them, in row order, like one `DocStore` holding only the live documents.

    store = SegmentedDocStore([PartReader(folder, part) for part in manifest.docstore_parts])
    store.row_of(["doc7"])        # {"doc7": 1042}, unless row 1042 is deleted
    store.by_rows([1042])         # {1042: Document(...)}
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from embedkit.data.corpus import Document
from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DocStore
from embedkit.index.masked import load_deleted_rows

if TYPE_CHECKING:
    from embedkit.lexical.segments import DocstorePart


class PartRecord(Protocol):
    """What a manifest records of a part: its rows and its live document count."""

    @property
    def row_start(self) -> int: ...

    @property
    def row_stop(self) -> int: ...

    @property
    def num_docs(self) -> int: ...


class StorePart(Protocol):
    """A part opened for reading (a dense `SegmentReader`, a BM25 `PartReader`)."""

    @property
    def folder(self) -> Path: ...

    @property
    def record(self) -> PartRecord: ...

    @property
    def docstore(self) -> DocStore: ...

    @property
    def deleted_set(self) -> frozenset[int]: ...

    def close(self) -> None: ...


def check_part_store(store: DocStore, folder: Path, *, count: int | None, rows: tuple[int, int],
                     next_row: int | None = None) -> None:
    """The cheap checks of one part's store (closed, then IndexFormatError, on a mismatch): `count` stored rows
    (None: not counted, a scan), every row within `rows` = [start, stop)."""
    found, stored = (len(store) if count is not None else None), store.row_range()
    problem = None
    if count is not None and found != count:
        problem = f"{store.path} holds {found} documents, the manifest records {count}"
    elif stored is not None and (stored[0] < rows[0] or stored[1] >= rows[1]):
        # New rows are numbered from the folder's next row: a stored row at or above it would get a second document.
        problem = (f"{store.path} holds rows {stored[0]}..{stored[1]}, outside the part's rows {rows[0]}.."
                   f"{rows[1] - 1}" + (f" (manifest next_row {next_row})" if next_row is not None else ""))
    if problem is not None:
        store.close()
        raise IndexFormatError(f"index {folder} is damaged: {problem}; rebuild the index")


def load_part_deletions(folder: Path, name: str | None, rows: tuple[int, int], count: int) -> np.ndarray:
    """Sorted deleted rows of a part from its deletion file `name` (None: none), which must list `count` rows
    within `rows` = [start, stop)."""
    if name is None:
        return np.zeros(0, dtype=np.int64)
    path = folder / name
    deleted = np.sort(load_deleted_rows(path, rows[1]))
    if len(deleted) != count or (len(deleted) and deleted[0] < rows[0]):
        raise IndexFormatError(f"index {folder} is damaged: {path} lists {len(deleted)} rows, the manifest records "
                               f"{count} of rows {rows[0]}..{rows[1] - 1}; rebuild the index")
    return deleted


class PartReader:
    """One BM25 document-store part, opened for reading. `count=False` skips counting its rows (a scan): an
    update's cost follows the change."""

    def __init__(self, folder: Path, record: DocstorePart, *, count: bool = True) -> None:
        self.folder, self.record, self._count = folder, record, count

    @cached_property
    def docstore(self) -> DocStore:
        store = DocStore(self.folder / self.record.docstore, read_all=self._count)
        check_part_store(store, self.folder, count=self.record.num_stored if self._count else None,
                         rows=(self.record.row_start, self.record.row_stop))
        return store

    @cached_property
    def deleted(self) -> np.ndarray:
        return load_part_deletions(self.folder, self.record.deleted, (self.record.row_start, self.record.row_stop),
                                   self.record.num_deleted)

    @cached_property
    def deleted_set(self) -> frozenset[int]:
        return frozenset(self.deleted.tolist())

    def close(self) -> None:
        if "docstore" in self.__dict__:
            self.docstore.close()


class SegmentedDocStore(DocStore):
    """The live documents of several parts, read like one `DocStore` (deleted rows are invisible; read-only:
    updates write new parts and deletion files)."""

    def __init__(self, segments: Sequence[StorePart]) -> None:  # no database of its own: no super().__init__
        self.segments = list(segments)
        self._starts = [segment.record.row_start for segment in self.segments]
        self.path = self.segments[0].folder if self.segments else Path(".")

    def _segment_of(self, row: int) -> StorePart | None:
        position = bisect.bisect_right(self._starts, row) - 1
        if position < 0:
            return None
        segment = self.segments[position]
        return segment if row < segment.record.row_stop else None

    def _by_segment(self, rows: Iterable[int]) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for row in rows:
            segment = self._segment_of(int(row))
            if segment is not None and int(row) not in segment.deleted_set:
                grouped.setdefault(self.segments.index(segment), []).append(int(row))
        return grouped

    def __len__(self) -> int:
        return sum(segment.record.num_docs for segment in self.segments)

    def close(self) -> None:
        for segment in self.segments:
            segment.close()

    def add(self, rows: Sequence[int], documents: Sequence[Document]) -> None:
        raise TypeError("the documents of a segmented index are written as a new segment, not added to a view")

    def delete_rows(self, rows: Iterable[int]) -> None:
        raise TypeError("deletions of a segmented index are written as deletion files, not to a view")

    def next_row(self) -> int:
        return self.segments[-1].record.row_stop if self.segments else 0

    def check_contents(self, next_row: int | None = None) -> None:
        for segment in self.segments:
            segment.docstore.check_contents(next_row)

    def by_rows(self, rows: Iterable[int]) -> dict[int, Document]:
        found: dict[int, Document] = {}
        for position, part in self._by_segment(row for row in rows if row >= 0).items():
            found.update(self.segments[position].docstore.by_rows(part))
        return found

    def row_of(self, doc_ids: Iterable[str]) -> dict[str, int]:
        ids = list(doc_ids)
        found: dict[str, int] = {}
        for segment in self.segments:
            for doc_id, row in segment.docstore.row_of(ids).items():
                if row not in segment.deleted_set:
                    found[doc_id] = row
        return found

    def get(self, doc_id: str) -> Document | None:
        row = self.row_of([doc_id]).get(doc_id)
        return None if row is None else self.by_rows([row]).get(row)

    def present_rows(self, rows: Iterable[int]) -> list[int]:
        return sorted(row for position, part in self._by_segment(rows).items()
                      for row in self.segments[position].docstore.present_rows(part))

    def ids_by_row(self) -> dict[int, str]:
        ids: dict[int, str] = {}
        for segment in self.segments:
            deleted = segment.deleted_set
            ids.update((row, doc_id) for row, doc_id in segment.docstore.ids_by_row().items() if row not in deleted)
        return ids

    def iter_documents(self) -> Iterator[tuple[int, Document]]:
        for segment in self.segments:
            deleted = segment.deleted_set
            for row, doc in segment.docstore.iter_documents():
                if row not in deleted:
                    yield row, doc


def live_rows_of(parts: Sequence[StorePart], ids: list[str], deleting: dict[int, set[int]],
                 new: DocStore | None) -> dict[str, tuple[int, int]]:
    """id -> (part position, row) of the live documents with these ids: in `parts` (minus their deleted rows and
    the rows this update deletes), or in the part being written (position -1)."""
    found: dict[str, tuple[int, int]] = {}
    for position, part in enumerate(parts):
        gone = deleting.get(position, set())
        for doc_id, row in part.docstore.row_of(ids).items():
            if row not in part.deleted_set and row not in gone:
                found[doc_id] = (position, row)
    if new is not None:
        found.update((doc_id, (-1, row)) for doc_id, row in new.row_of(ids).items())
    return found


def verify_parts(folder: Path, parts: Sequence[StorePart]) -> np.ndarray:
    """`embedkit index verify` of a store's parts: every value's type, rows within each part, live counts as
    recorded, ids unique across the live documents. Returns the live rows, ascending. Reads every row."""
    seen: set[str] = set()
    live_rows = []
    for part in parts:
        record = part.record
        store = part.docstore  # opening counts its rows against the manifest
        store.check_contents(record.row_stop)
        ids = store.ids_by_row()
        stored = np.fromiter(sorted(ids), dtype=np.int64, count=len(ids))
        if len(stored) and stored[0] < record.row_start:
            raise IndexFormatError(f"index {folder} is damaged: {store.path} holds row {stored[0]}, below its rows "
                                   f"{record.row_start}..{record.row_stop - 1}; rebuild the index")
        live = stored[~np.isin(stored, np.fromiter(part.deleted_set, dtype=np.int64))]
        if len(live) != record.num_docs:
            raise IndexFormatError(f"index {folder} is damaged: {store.path} has {len(live)} live documents, the "
                                   f"manifest records {record.num_docs}; rebuild the index")
        for row in live.tolist():
            if ids[row] in seen:
                raise IndexFormatError(f"index {folder} is damaged: document id {ids[row]!r} is live in two parts "
                                       "of its document store; rebuild the index")
            seen.add(ids[row])
        live_rows.append(live)
    return np.concatenate(live_rows) if live_rows else np.zeros(0, dtype=np.int64)
