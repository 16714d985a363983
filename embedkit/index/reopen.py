"""Reopen a dense index folder after an update, keeping the segments that did not change.

An update of a segmented folder (`embedkit.index.segments`) writes a new segment or a small deletion file and
swaps `manifest.json`; every other file stays as it was. A server that reloaded the whole folder after each
update would re-read every FAISS file (64 GB at wiki-18 scale) to serve ten new passages. `reopen_index(path,
previous)` opens the new state the way `Index.load` does, except that each segment whose files the new
manifest records exactly as the previous state did (same names, sizes and SHA-256) takes its already-open
FAISS index, document store and deleted rows from `previous` instead of reading them again. A segment whose only
change is a new deletion file keeps its FAISS index and document store and reads just that file; new segments
are read whole. A folder in the one-segment layout (its first update converts it in place into segment 0 with
the same file names) hands over its FAISS index and document store the same way. With the torch backend each
segment's matrix (`SegmentReader.torch_search`) goes along with its FAISS index and document store: a reload after
an add builds the new segment's matrix only, and after a removal only the changed segment's mask of deleted rows.

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

from embedkit.index.base import Index
from embedkit.index.dense import DenseIndex
from embedkit.index.manifest import DenseManifest, SegmentRecord
from embedkit.index.segments import SegmentParts, SegmentReader


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
    """What a previous state already holds open for one segment (`SegmentReader.opened`)."""

    record: SegmentRecord
    manifest: DenseManifest
    parts: SegmentParts
    reader: SegmentReader | None = None  # the reader itself, when it can be kept whole


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
    if not index.manifest.segments or index.segments_opened:
        return SegmentReuse(read=1, fresh=(0,))
    readers = [index.segment_reader(record) for record in index.manifest.segments]
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
        record, parts = reader.record, old.parts
        faiss_same = parts.faiss_index is not None and record.faiss == old.record.faiss and same(record.faiss) \
            and record.num_vectors == old.record.num_vectors
        store_same = parts.docstore is not None and record.docstore == old.record.docstore \
            and same(record.docstore) and record.num_stored == old.record.num_stored
        deleted_same = parts.deleted is not None and record.deleted == old.record.deleted \
            and record.deleted is not None and same(record.deleted) and record.num_deleted == old.record.num_deleted
        vectors_same = record.vectors == old.record.vectors and (record.vectors is None or same(record.vectors))
        # The torch matrix holds rows of the document store with vectors of the FAISS file (or the stored copy):
        # kept with them; only its mask of deleted rows follows the new deletion file.
        torch_same = parts.torch_search is not None and faiss_same and store_same and vectors_same
        reader.adopt(SegmentParts(faiss_index=parts.faiss_index if faiss_same else None,
                                  docstore=parts.docstore if store_same else None,
                                  deleted=parts.deleted if deleted_same else None,
                                  torch_search=parts.torch_search if torch_same else None))
        refreshed += faiss_same
        if not faiss_same:
            fresh.append(record.id)
    index.use_segments(readers)
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
            and a.vectors == b.vectors and old.mmap == new.mmap and old.backend == new.backend
            and old.search_device == new.search_device and Path(old.path).resolve() == Path(new.path).resolve())


def _loaded_segments(previous: DenseIndex, index: DenseIndex) -> dict[int, _Loaded]:
    """Segment id -> what `previous` holds open for it (only what it actually opened)."""
    if not _compatible(previous, index):
        return {}
    # The one-segment layout's files become segment 0 under the same names when an update converts them: their
    # parts are handed over, never that reader itself (the new state reads the segment under its own record).
    return {reader.record.id: _Loaded(reader.record, previous.manifest, reader.opened(), reader if own else None)
            for reader, own in previous.opened_segments()}
