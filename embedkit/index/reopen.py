"""Reopen a dense index folder after an update, keeping the segments that did not change.

An update of a segmented folder (`embedkit.index.segments`) writes a new segment or a small deletion file and
swaps `manifest.json`; every other file stays as it was. A server that reloaded the whole folder after each
update would re-read every FAISS file (64 GB at wiki-18 scale) to serve ten new passages. `reopen_index(path,
previous)` opens the new state the way `Index.load` does, except that each segment whose files the new
manifest records exactly as the previous state did (same names, sizes and SHA-256) takes its already-open
FAISS index, document store and deleted rows from `previous` instead of reading them again. A segment whose only
change is a new deletion file keeps its FAISS index and document store and reads just that file; new segments
are read whole. A folder in the one-segment layout (its first update converts it in place into segment 0 with
the same file names) hands over its FAISS index and document store the same way.

Why this is safe: segment files are never rewritten in place and new ones get fresh names, so a file recorded
with the same name and SHA-256 holds the same bytes the previous state read (files recorded without a checksum,
e.g. a FAISS file linked in by `embedkit index import --link`, are kept only while the folder's `created_at`
is unchanged: a rebuilt folder starts over). Opened objects stay valid after the writer removes their files.
The reuse is decided inside the same consistent read as the rest of the opening (`embedkit.index.consistent`),
so the index returned is one committed state.

    index, reuse = reopen_index("indexes/wiki18", served_index, mmap=True)
    reuse.as_dict()   # {"kept": 1, "refreshed": 0, "read": 1}: segments kept whole, kept with their FAISS
                      # index but a new deletion file, read from disk
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.index.base import Index
from embedkit.index.dense import DenseIndex
from embedkit.index.docstore import DOCSTORE_NAME
from embedkit.index.manifest import DELETED_NAME, FAISS_NAME, DenseManifest, SegmentRecord
from embedkit.index.segments import SegmentReader


@dataclass(frozen=True)
class SegmentReuse:
    """How a reopen got each segment: kept whole, kept with a new deletion file, or read from disk."""

    kept: int = 0
    refreshed: int = 0
    read: int = 0
    #: Ids of the segments whose FAISS index was read from disk by this reopen (not handed over).
    fresh: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, int]:
        return {key: value for key, value in asdict(self).items() if key != "fresh"}


@dataclass
class _Loaded:
    """What a previous state already holds open for one segment (None: not opened, or not reusable)."""

    record: SegmentRecord
    manifest: DenseManifest
    faiss_index: Any = None
    docstore: Any = None
    deleted: np.ndarray | None = None
    reader: SegmentReader | None = None


def reopen_index(path: str | Path, previous: Index | None, **options: Any) -> tuple[Index, SegmentReuse | None]:
    """Open `path` like `Index.load(path, **options)`, reusing what `previous` (an earlier state of the same
    folder, opened with the same options) holds for unchanged segments; see the module docstring."""
    from embedkit.index.kinds import open_index

    reuse: list[SegmentReuse | None] = [None]  # of the attempt that succeeded (a read retried on a swap redoes it)

    def hand_over(index: Index) -> None:
        reuse[0] = keep_unchanged_segments(index, previous)

    index = open_index(path, prepare=hand_over, **options)
    return index, reuse[0]


def keep_unchanged_segments(index: Index, previous: Index | None) -> SegmentReuse | None:
    """Give `index` (opened, no segment read yet) the open parts of `previous` whose files are unchanged.

    None for kinds without FAISS segments (BM25); a dense folder in the one-segment layout is read whole.
    """
    if not isinstance(index, DenseIndex):
        return None
    if not index.manifest.segments or "segments" in vars(index):
        return SegmentReuse(read=1, fresh=(0,))
    readers = [SegmentReader(index.path, index.manifest, record, mmap=index._mmap, backend=index.backend)
               for record in index.manifest.segments]
    loaded = _loaded_segments(previous, index) if isinstance(previous, DenseIndex) else {}
    kept, refreshed, fresh = 0, 0, []
    for position, reader in enumerate(readers):
        old = loaded.get(reader.record.id)
        if old is None:
            fresh.append(reader.record.id)
            continue
        same = _same_in(old, index.manifest)
        if old.reader is not None and old.record == reader.record and all(same(n) for n in reader.record.files()):
            readers[position] = old.reader  # every file and count unchanged: the very same opened segment
            kept += 1
            continue
        record, handed = reader.record, False
        if old.faiss_index is not None and record.faiss == old.record.faiss and same(record.faiss) \
                and record.num_vectors == old.record.num_vectors:
            vars(reader)["faiss_index"] = old.faiss_index
            handed = True
        if old.docstore is not None and record.docstore == old.record.docstore and same(record.docstore) \
                and record.num_stored == old.record.num_stored:
            vars(reader)["docstore"] = old.docstore
        if old.deleted is not None and record.deleted == old.record.deleted and record.deleted is not None \
                and same(record.deleted) and record.num_deleted == old.record.num_deleted:
            vars(reader)["deleted"] = old.deleted
        refreshed += handed
        if not handed:
            fresh.append(record.id)
    vars(index)["segments"] = readers
    return SegmentReuse(kept=kept, refreshed=refreshed, read=len(fresh), fresh=tuple(fresh))


def _same_in(old: _Loaded, manifest: DenseManifest) -> Callable[[str], bool]:
    """A test of one file name: recorded identically by `old`'s manifest and `manifest` (see `_same_file`)."""
    return lambda name: _same_file(name, old.manifest, manifest)


def _same_file(name: str, old: DenseManifest, new: DenseManifest) -> bool:
    before, after = old.files.get(name), new.files.get(name)
    if before is None or after is None or before != after:
        return False
    # Without a checksum only the folder's lineage vouches for the bytes (a rebuild gets a new created_at).
    return before.sha256 is not None or old.created_at == new.created_at


def _compatible(old: DenseIndex, new: DenseIndex) -> bool:
    """Opened objects can move between the two states: same vectors, metric, storage and opening options."""
    a, b = old.manifest, new.manifest
    return (a.encoder.dim == b.encoder.dim and a.metric == b.metric and a.on_disk == b.on_disk
            and a.vectors == b.vectors and old._mmap == new._mmap and old.backend == new.backend
            and Path(old.path).resolve() == Path(new.path).resolve())


def _loaded_segments(previous: DenseIndex, index: DenseIndex) -> dict[int, _Loaded]:
    """Segment id -> what `previous` holds open for it (only what it actually opened)."""
    if not _compatible(previous, index):
        return {}
    manifest = previous.manifest
    if manifest.segments:
        opened = vars(previous).get("segments") or []
        return {reader.record.id: _Loaded(reader.record, manifest, vars(reader).get("faiss_index"),
                                          vars(reader).get("docstore"), vars(reader).get("deleted"), reader)
                for reader in opened}
    # The one-segment layout: its files become segment 0 under the same names when an update converts it.
    faiss_index = vars(previous).get("faiss_index")
    if faiss_index is None:
        return {}
    masked: np.ndarray = vars(previous).get("deleted_rows", np.zeros(0, dtype=np.int64))
    masked_count = len(masked)
    record = SegmentRecord(id=0, faiss=FAISS_NAME, docstore=DOCSTORE_NAME,
                           vectors=manifest.vectors.file if manifest.vectors else None,
                           deleted=DELETED_NAME if masked_count else None, row_start=0,
                           row_stop=max(manifest.next_row, manifest.num_docs + masked_count),
                           num_vectors=int(faiss_index.ntotal), num_stored=manifest.num_docs,
                           num_deleted=masked_count, num_docs=min(manifest.num_docs, int(faiss_index.ntotal)))
    docstore = vars(previous).get("docstore")
    deleted = np.sort(masked) if masked_count else None
    return {0: _Loaded(record, manifest, faiss_index, docstore, deleted)}
