"""Commit an update of a dense folder as new segment files and a manifest swap (layout: `embedkit.index.segments`).

    from embedkit.index.segments_update import segmented_update
    with folder_lock(path):
        with segmented_update(path, manifest, report) as update:   # report: lifecycle.UpdateReport
            update.upsert(docs, vectors)
            update.remove(["doc7"])
        # committed: new manifest.json in place; the merge policy may have merged segments since

Cost: in proportion to the change. The update reads the manifest, stats every recorded file (sizes), looks ids
up in the segments' document stores (SQLite indexes, a few pages each), reads and hashes the deletion files it
rewrites (and the trained template of IVF/PQ kinds), and writes and hashes only its new files.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.docstore_parts import live_rows_of
from embedkit.index.faiss_ops import (
    add_vectors,
    create_index,
    empty_trained_copy,
    ivf_of,
    read_faiss_file,
    try_remove,
)
from embedkit.index.kinds import check_document_ids
from embedkit.index.manifest import (
    DELETED_NAME,
    FAISS_NAME,
    MANIFEST_NAME,
    SEGMENT_FILE,
    SEGMENTED_FORMAT,
    TRAINED_FILE,
    VECTOR_FILES,
    DenseManifest,
    FileRecord,
    HistoryEntry,
    SegmentRecord,
    file_sha256,
    segment_file,
)
from embedkit.index.masked import save_deleted_rows as _save_rows
from embedkit.index.segments import SegmentReader, retrain_due, segment_records
from embedkit.io import crash_point, fsync_folder

_LEGACY_NAMES = frozenset({FAISS_NAME, DOCSTORE_NAME, DELETED_NAME, *VECTOR_FILES.values()})
# Leftovers of a killed writer: SQLite's journal of a segment store, an unfinished manifest.json.
_LEFTOVER = re.compile(r"^(seg-\d{6,}\.docstore\.sqlite-journal|manifest\.json\.tmp-\d+-[0-9a-f]{8})$")


@dataclass
class UpdateReport:
    """What an update did, also recorded in the manifest's history."""

    action: str
    added: int = 0
    replaced: int = 0
    removed: int = 0
    missing: list[str] = field(default_factory=list)
    masked: int = 0
    num_docs: int = 0

    def summary(self) -> str:
        parts = [f"{self.action}: {self.num_docs} documents now"]
        for name in ("added", "replaced", "removed"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name}")
        if self.missing:
            parts.append(f"{len(self.missing)} ids not in the index")
        if self.masked:
            parts.append(f"{self.masked} deleted rows masked until `embedkit index compact`")
        return ", ".join(parts)


def collect_garbage(folder: Path, manifest: DenseManifest) -> list[str]:
    """Remove the files of `folder` that `manifest` does not reference and whose names embedkit gives
    (segment, deletion and template files; the one-segment layout's files once segment 0 is gone). Run under
    the folder's lock, before an update writes: readers of an older state found a newer manifest and reopened.
    Returns the removed names."""
    if not manifest.segments:
        return []
    referenced = set(manifest.files) | manifest.required_files(folder)
    removed = []
    for entry in os.scandir(folder):
        name = entry.name
        if name in referenced or not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
            continue
        if SEGMENT_FILE.match(name) or TRAINED_FILE.match(name) or _LEFTOVER.match(name) or name in _LEGACY_NAMES:
            os.unlink(entry.path)
            removed.append(name)
    return removed


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NewSegment:
    """A segment being written: document rows, vectors and a FAISS index, from row `row_start` on."""

    def __init__(self, folder: Path, manifest: DenseManifest, segment_id: int, template, row_start: int) -> None:
        import faiss

        self.folder, self.manifest, self.id = folder, manifest, segment_id
        self.dim = manifest.encoder.dim
        self.faiss_name = segment_file(segment_id, "faiss")
        self.docstore_name = segment_file(segment_id, "docstore.sqlite")
        stored = manifest.vectors
        self.vectors_name = segment_file(segment_id, VECTOR_FILES[stored.dtype]) if stored else None
        self.dtype = np.dtype(stored.dtype) if stored else None
        self.index = (faiss.clone_index(template) if template is not None
                      else create_index(self.dim, manifest.index_factory, manifest.metric))
        self.store = DocStore(folder / self.docstore_name, readonly=False)
        self.handle = open(folder / self.vectors_name, "wb") if self.vectors_name else None
        self.row_start = self.row_stop = row_start
        self.masked: set[int] = set()  # rows replaced within this segment that FAISS cannot remove (HNSW)
        self.stored = 0

    def names(self) -> list[str]:
        return [name for name in (self.faiss_name, self.docstore_name, self.vectors_name) if name]

    def append(self, docs: Sequence[Document], vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Add documents under the next rows (or the given ascending `rows` ≥ row_stop); returns their rows."""
        if rows is None:
            rows = np.arange(self.row_stop, self.row_stop + len(docs), dtype=np.int64)
        self.store.add(rows.tolist(), docs)
        add_vectors(self.index, vectors, rows)
        if self.handle is not None:
            assert self.dtype is not None
            self.handle.seek((int(rows[0]) - self.row_start) * self.dim * self.dtype.itemsize) if len(rows) else None
            self.handle.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self.row_stop = int(rows[-1]) + 1 if len(rows) else self.row_stop
        self.stored += len(docs)
        return rows

    def remove(self, rows: np.ndarray) -> None:
        """Drop rows written earlier in this update (an id upserted twice): from the store and, where FAISS
        can, from the index; else they are masked like any deletion."""
        if len(rows) == 0:
            return
        self.store.delete_rows(rows.tolist())
        self.stored -= len(rows)
        if not try_remove(self.index, rows):
            self.masked.update(rows.tolist())

    def finish(self, generation: int) -> tuple[SegmentRecord, list[str]]:
        """Write the FAISS file and the deletion file of masked rows; the record and the written names."""
        import faiss

        self.store.close()
        if self.handle is not None:
            assert self.dtype is not None
            self.handle.truncate((self.row_stop - self.row_start) * self.dim * self.dtype.itemsize)
            self.handle.close()
        faiss.write_index(self.index, str(self.folder / self.faiss_name))
        names = self.names()
        deleted = None
        if self.masked:
            deleted = segment_file(self.id, f"del-{generation:06d}.npy")
            _save_rows(self.folder / deleted, np.array(sorted(self.masked), dtype=np.int64))
            names.append(deleted)
        record = SegmentRecord(id=self.id, faiss=self.faiss_name, docstore=self.docstore_name,
                               vectors=self.vectors_name, deleted=deleted, row_start=self.row_start,
                               row_stop=self.row_stop, num_vectors=int(self.index.ntotal), num_stored=self.stored,
                               num_deleted=len(self.masked), num_docs=self.stored)
        return record, names

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.store.close()
        if self.handle is not None:
            self.handle.close()
        for name in self.names():
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()


class SegmentedUpdate:
    """One update of a dense folder, committed by `commit` (new files, then the manifest swap)."""

    def __init__(self, folder: Path, manifest: DenseManifest, report: UpdateReport) -> None:
        if manifest.on_disk:
            raise EmbedkitError(
                f"{folder} keeps its inverted lists on disk, which FAISS would change in place; add documents by "
                "merging: `embedkit index merge OLD NEW --out NEW_INDEX` (no re-encoding of OLD)")
        self.folder, self.manifest, self.report = folder, manifest, report
        self.generation = manifest.generation + 1
        self.records = segment_records(folder, manifest)
        self.readers = [SegmentReader(folder, manifest, record, count=False) for record in self.records]
        self.deleting: dict[int, set[int]] = {}  # segment position -> rows this update deletes
        self.new: NewSegment | None = None
        self.written: list[str] = []
        self.trained_index = manifest.trained_index
        self.trained_rows = manifest.trained_rows
        self.dim = manifest.encoder.dim
        self.source_name: str | None = None

    # --- reading ---------------------------------------------------------------------------------------

    def live_rows_of(self, ids: list[str]) -> dict[str, tuple[int, int]]:
        """id -> (segment position, row) of the live documents with these ids (-1: the new segment)."""
        return live_rows_of(self.readers, ids, self.deleting, self.new.store if self.new is not None else None)

    def _template(self):
        """The trained empty index new segments copy (IVF/PQ), or None where an empty index needs no training."""
        import faiss

        from embedkit.index.dense import TRAINED_NAME

        empty = create_index(self.dim, self.manifest.index_factory, self.manifest.metric)
        if empty.is_trained:
            return None
        if self.trained_index is not None:  # written by the build (or an earlier update): small
            return read_faiss_file(self.folder / self.trained_index)
        # First update of a trained folder built before builds wrote templates: its trained structure, emptied,
        # becomes the template (IVF lists memory-mapped, never read).
        template = empty_trained_copy(self.folder / self.records[0].faiss, ivf=ivf_of(empty) is not None)
        self.trained_index = TRAINED_NAME.format(generation=self.generation)
        faiss.write_index(template, str(self.folder / self.trained_index))
        self.written.append(self.trained_index)
        self.trained_rows = self.manifest.num_docs
        return template

    # --- changing ----------------------------------------------------------------------------------------

    def upsert(self, docs: list[Document], vectors: np.ndarray) -> None:
        if vectors.shape != (len(docs), self.dim):
            raise EmbedkitError(f"expected vectors of shape ({len(docs)}, {self.dim}), got {vectors.shape}")
        last = {doc.id: position for position, doc in enumerate(docs)}  # a repeated id: the last one wins
        if len(last) < len(docs):
            keep = sorted(last.values())
            docs, vectors = [docs[i] for i in keep], vectors[keep]
        check_document_ids([doc.id for doc in docs], source=self.source_name)
        existing = self.live_rows_of([doc.id for doc in docs])
        self._delete(existing.values())
        if self.new is None:
            self.new = NewSegment(self.folder, self.manifest, self.generation, self._template(),
                                  self.manifest.next_row)
        self.new.append(docs, vectors)
        self.report.replaced += len(existing)
        self.report.added += len(docs) - len(existing)

    def remove(self, ids: list[str]) -> None:
        existing = self.live_rows_of(ids)
        self.report.missing += [doc_id for doc_id in dict.fromkeys(ids) if doc_id not in existing]
        self._delete(existing.values())
        self.report.removed += len(existing)

    def _delete(self, located) -> None:
        fresh = []
        for position, row in located:
            if position < 0:
                fresh.append(row)
            else:
                self.deleting.setdefault(position, set()).add(row)
        if fresh and self.new is not None:
            self.new.remove(np.array(sorted(fresh), dtype=np.int64))

    # --- committing --------------------------------------------------------------------------------------

    def segments_after(self) -> list[SegmentRecord]:
        """The segment list of the new state, writing the deletion files and the new segment."""
        records: list[SegmentRecord] = []
        for position, record in enumerate(self.records):
            rows = self.deleting.get(position)
            if rows:
                union = np.union1d(self.readers[position].deleted, np.array(sorted(rows), dtype=np.int64))
                name = segment_file(record.id, f"del-{self.generation:06d}.npy")
                _save_rows(self.folder / name, union)
                self.written.append(name)
                record = record.model_copy(update={"deleted": name, "num_deleted": len(union),
                                                   "num_docs": record.num_docs - len(rows)})
            if record.num_docs > 0:  # a segment without live documents is dropped (its files collected later)
                records.append(record)
        if self.new is not None and self.new.stored > 0:
            record, names = self.new.finish(self.generation)
            self.written += names
            records.append(record)
        elif self.new is not None:
            self.new.abandon()
        self.new = None
        return records

    def commit(self, entry: HistoryEntry, *, steps: str = "segment") -> DenseManifest:
        """Write the new files, sync them, swap the manifest. Returns the new manifest. `steps` names the crash
        points (`SEGMENT_STEPS`): "segment" for an update, "merge" for a merge."""
        from embedkit import __version__

        records = self.segments_after()
        crash_point(f"{steps}-written")
        for name in self.written:
            _sync_file(self.folder / name)
        fsync_folder(self.folder)
        crash_point(f"{steps}-synced")
        referenced = {name for record in records for name in record.files()}
        if self.trained_index:
            referenced.add(self.trained_index)
        files = {name: record for name, record in self.manifest.files.items() if name in referenced}
        # A format-1 folder recorded sizes only: its files get checksums once, at conversion (except the FAISS
        # file `index import --link` linked in, which is checked by size).
        unhashed = [name for name, record in files.items()
                    if record.sha256 is None and not (self.folder / name).is_symlink()]
        for name in [*self.written, *unhashed]:
            if name in referenced:
                path = self.folder / name
                files[name] = FileRecord(size=path.stat().st_size, sha256=file_sha256(path))
        added = self.report.added + self.report.replaced
        data = self.manifest.model_dump()
        data.update(
            format_version=SEGMENTED_FORMAT, generation=self.generation, embedkit_version=__version__,
            segments=[record.model_dump() for record in records], num_docs=sum(r.num_docs for r in records),
            next_row=max([self.manifest.next_row, *(record.row_stop for record in records)]),
            files={name: record.model_dump() for name, record in files.items()}, trained_index=self.trained_index,
            trained_rows=self.trained_rows,
            added_since_training=self.manifest.added_since_training + (added if self.trained_index else 0),
            history=[*data["history"], entry.model_copy(update={"num_docs": sum(r.num_docs for r in records)})
                     .model_dump()],
        )
        if not records:  # every document removed: an empty segment list would read as the old layout
            raise EmbedkitError(f"cannot remove every document of {self.folder}; build a new index instead")
        manifest = DenseManifest.model_validate(data)
        manifest.save(self.folder)
        crash_point("manifest-swapped" if steps == "segment" else f"{steps}-swapped")
        self.report.num_docs = manifest.num_docs
        self.report.masked = sum(record.num_vectors - record.num_docs for record in records)
        return manifest

    def abandon(self) -> None:
        """Remove what a failed update wrote (nothing references it); the old manifest still rules."""
        if self.new is not None:
            self.new.abandon()
        for name in self.written:
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()
        for reader in self.readers:
            reader.close()

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


@contextlib.contextmanager
def segmented_update(folder: Path, manifest: DenseManifest, report: UpdateReport, *, source: str | None = None
                     ) -> Iterator[SegmentedUpdate]:
    """An update committed on leaving the block (then the merge policy runs); discarded on an exception.
    The caller holds the folder's lock."""
    with write_errors(folder, "nothing was changed"):
        collect_garbage(folder, manifest)
        crash_point("collected")
        update = SegmentedUpdate(folder, manifest, report)
        update.source_name = source
        try:
            yield update
            entry = HistoryEntry(action=report.action, documents=report.added + report.replaced or report.removed,
                                 source=source, added=report.added, replaced=report.replaced,
                                 removed=report.removed, missing=len(report.missing), segment=update.generation)
            new = update.commit(entry)
        except BaseException:
            update.abandon()
            raise
        update.close()
    with write_errors(folder, "the update was committed; its segments were not merged"):
        apply_merge_policy(folder, new)


@contextlib.contextmanager
def write_errors(folder: Path, outcome: str) -> Iterator[None]:
    """A folder we may not write, or a full disk, as an EmbedkitError naming the folder and saying `outcome`."""
    from embedkit.io import is_disk_full
    from embedkit.locks import NOT_WRITABLE_ERRNOS, not_writable

    try:
        yield
    except OSError as error:
        if error.errno in NOT_WRITABLE_ERRNOS:
            problem = not_writable(error, folder)
            raise EmbedkitError(f"cannot write {folder}: {problem.reason}; {outcome}") from None
        if is_disk_full(error):
            raise EmbedkitError(f"cannot write {folder}: no space left on the device ({error}); {outcome}") from None
        raise
    except Exception as error:  # SQLite and FAISS report a full disk in their own exception types
        if is_disk_full(error):
            raise EmbedkitError(f"cannot write {folder}: no space left on the device, or it failed ({error}); "
                                f"{outcome}") from None
        raise


# --- merging ------------------------------------------------------------------------------------------------


def merge_candidates(manifest: DenseManifest) -> list[int] | None:
    """Positions of adjacent segments the merge policy says to merge now, or None (`MergePolicy.next_merge`)."""
    if not manifest.segments:
        return None
    # Indexed rows are the FAISS file's: deleted and masked rows stay in it until the segment is rewritten.
    return manifest.merge_policy.next_merge([(segment.num_vectors, segment.num_vectors - segment.num_docs)
                                             for segment in manifest.segments])


def apply_merge_policy(folder: Path, manifest: DenseManifest) -> DenseManifest:
    """Merge segments while the policy asks for it (under the caller's lock); returns the final manifest."""
    for _ in range(len(manifest.segments)):
        positions = merge_candidates(manifest)
        if positions is None:
            break
        merged = merge_segments(folder, manifest, positions)
        if merged is None:
            break
        manifest = merged
    return manifest


def merge_segments(folder: Path, manifest: DenseManifest, positions: Sequence[int]) -> DenseManifest | None:
    """Rewrite adjacent segments as one without their deleted rows, committed like any update (a crash keeps
    the old segments). Rows keep their order (renumbered from the first segment's row_start), so results and
    ties are unchanged. None when the vectors cannot be read back exactly (a lossy kind without stored vectors)."""
    from embedkit.index.faiss_ops import stores_exact_vectors

    collect_garbage(folder, manifest)
    report = UpdateReport(action="merge-segments")
    update = SegmentedUpdate(folder, manifest, report)
    chosen = [update.readers[position] for position in positions]
    if manifest.vectors is None and not all(stores_exact_vectors(reader.faiss_index) for reader in chosen):
        update.close()
        return None
    try:
        update.new = NewSegment(folder, manifest, update.generation, update._template(),
                                chosen[0].record.row_start)
        row = chosen[0].record.row_start
        for reader in chosen:
            batch: list[tuple[int, Document]] = []
            for item in reader.docstore.iter_documents():
                if item[0] in reader.deleted_set:
                    continue
                batch.append(item)
                if len(batch) == 8192:
                    row = _copy_rows(update.new, reader, batch, row)
                    batch = []
            if batch:
                row = _copy_rows(update.new, reader, batch, row)
        merged, names = update.new.finish(update.generation)
        update.new = None
        update.written += names
        records = [record for position, record in enumerate(update.records) if position not in positions]
        records.insert(positions[0], merged)
        update.records = records
        update.readers = []
        entry = HistoryEntry(action="merge-segments", documents=merged.num_docs, source=None,
                             segments=",".join(str(manifest.segments[p].id) for p in positions),
                             segment=update.generation)
        new = update.commit(entry, steps="merge")
    except BaseException:
        update.abandon()
        for reader in chosen:
            reader.close()
        raise
    for reader in chosen:
        reader.close()
    return new


def _copy_rows(segment: NewSegment, reader: SegmentReader, batch: list[tuple[int, Document]], row: int) -> int:
    old_rows = np.array([r for r, _ in batch], dtype=np.int64)
    new_rows = np.arange(row, row + len(batch), dtype=np.int64)
    segment.append([doc for _, doc in batch], reader.vectors(old_rows), new_rows)
    return row + len(batch)


def check_update_files(folder: Path, manifest: DenseManifest) -> None:
    """What an update checks before it reads: every recorded file's size (a stat), and the checksums of the
    deletion files and template it reads whole."""
    manifest.check_files(folder)
    for record in segment_records(folder, manifest):
        if record.deleted is not None:
            _check_sha(folder, manifest, record.deleted)
    if manifest.trained_index is not None:
        _check_sha(folder, manifest, manifest.trained_index)


def _check_sha(folder: Path, manifest: DenseManifest, name: str) -> None:
    record = manifest.files.get(name)
    if record is not None and record.sha256 is not None and file_sha256(folder / name) != record.sha256:
        raise IndexFormatError(f"index {folder} is damaged: {folder / name} does not match the checksum recorded "
                               f"in {MANIFEST_NAME}; rebuild the index")


__all__ = ["SegmentedUpdate", "apply_merge_policy", "collect_garbage", "merge_segments", "retrain_due",
           "segmented_update"]
