"""Update a BM25 index folder in place of a rebuild: add/upsert, remove, compact, for both backends.

    from embedkit.data import iter_documents
    from embedkit.lexical.update import add_documents, compact_index, remove_documents

    add_documents("indexes/bm25", iter_documents("new.jsonl"))    # new ids inserted, known ids replaced
    remove_documents("indexes/bm25", ["doc7", "doc9"])
    compact_index("indexes/bm25")                                # one segment, deleted documents dropped

An update writes only what changes. The backends keep segments whose files never change once written
(Lucene's own; bm25s token segments, `embedkit.lexical.bm25s_segments`), and the document store is kept in parts
the same way (`BM25Manifest.docstore_parts`, the layout of dense segments, `embedkit.index.segments`):

    docstore.sqlite                 part 0: the rows of the build (or of the last compaction)
    seg-000003.docstore.sqlite      the rows added by the update of generation 3, and only those
    seg-000000.del-000005.npy       rows of part 0 deleted up to generation 5 (sorted int64; replaces the last one)

So the new folder is made of hard links to every file of the old folder (parts included: an update never writes
into them) and the new part, deletion files and backend files; the manifest reuses the checksums of the linked
files and hashes only the new ones. The folder is then swapped in whole (`embedkit.io.atomic_directory`), under
the folder's lock: a killed update leaves the old index or the new one, never a mix, and a reader that opened
the old folder keeps reading it. (Swapping only the manifest, as dense folders do, would not do here: Lucene's
IndexWriter rewrites its commit files where they are.) The update checks the sizes of the files it reads
(`embedkit index verify` checks every byte) and looks ids up by index in each part, so its cost follows the
change, not the corpus. Files that no part references any more are simply not in the new folder.

`compact` writes the live documents as one new `docstore.sqlite` (bm25s renumbers them 0, 1, …; pyserini keeps
their rows) and records no parts, as after a build. After an update the merge policy (`BM25Settings.merge`)
decides whether to compact at once. `EMBEDKIT_CRASH_AT` (see `embedkit.io`) also stops an update at the steps in
`UPDATE_STEPS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from embedkit.data.corpus import Document
from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.docstore_parts import PartReader, SegmentedDocStore, live_rows_of
from embedkit.index.kinds import check_document_ids, check_folder
from embedkit.index.lifecycle import UpdateReport
from embedkit.index.manifest import (
    MANIFEST_NAME,
    SEGMENTED_FORMAT,
    UNTRACKED_FILES,
    BM25Manifest,
    FileRecord,
    HistoryEntry,
    file_sha256,
    segment_file,
)
from embedkit.index.masked import save_deleted_rows
from embedkit.io import atomic_directory, crash_point, folder_lock
from embedkit.lexical.backends import LexicalBackend, LexicalUpdater, get_backend
from embedkit.lexical.bm25s_segments import next_row
from embedkit.lexical.segments import BM25Segment, DocstorePart, summarize
from embedkit.lexical.settings import BM25MergePolicy

#: Steps of an update where `EMBEDKIT_CRASH_AT` kills the process (besides `embedkit.io.SWAP_STEPS`).
UPDATE_STEPS = ("bm25-linked", "bm25-parts-written", "bm25-backend-written", "bm25-compact-store-written",
                "bm25-compacted")
CHUNK = 2048


@dataclass
class BM25UpdateReport(UpdateReport):
    """What a BM25 update did, with the segments it left and whether the merge policy compacted."""

    segments: list[BM25Segment] = field(default_factory=list)
    compacted: bool = False

    def summary(self) -> str:
        text = super().summary() + f"; {summarize(self.segments)}"
        return text + (" after compacting (merge policy)" if self.compacted and self.action != "compact" else "")


def add_documents(path: str | Path, documents: Iterable[Document], *, source: str | None = None,
                  merge: bool = True) -> BM25UpdateReport:
    """Insert documents; one whose id is already indexed replaces it (upsert). `merge=False`: no compaction."""
    with _update(Path(path), "add", source, merge=merge) as update:
        iterator = iter(documents)
        while chunk := list(islice(iterator, CHUNK)):
            update.upsert(chunk)
        return update.report


def remove_documents(path: str | Path, ids: Iterable[str], *, source: str | None = None,
                     merge: bool = True) -> BM25UpdateReport:
    """Delete documents by id; ids not in the index are reported in `missing`, not an error."""
    with _update(Path(path), "remove", source, merge=merge) as update:
        iterator = iter(ids)
        while chunk := list(islice(iterator, CHUNK)):
            update.remove(chunk)
        return update.report


def compact_index(path: str | Path) -> BM25UpdateReport:
    """Merge the segments into one and drop deleted documents (what a rebuild from the live documents gives)."""
    with _update(Path(path), "compact", None, merge=False) as update:
        update.compact_now = True
        return update.report


def whole_store_part(folder: Path, manifest: BM25Manifest) -> DocstorePart:
    """The one part of a folder that records none (built, compacted, or updated before parts existed): its
    `docstore.sqlite`, whose rows run up to its highest (an index lookup, no scan)."""
    store = DocStore(folder / DOCSTORE_NAME, read_all=False)
    try:
        rows = store.row_range()
    finally:
        store.close()
    return DocstorePart(id=0, docstore=DOCSTORE_NAME, row_start=0, row_stop=0 if rows is None else rows[1] + 1,
                        num_stored=manifest.num_docs)


class _Update:
    """An update of the copy `folder` of a BM25 index folder: new documents go into a new document-store part,
    deletions into new deletion files of the parts they touch; the old parts are read, never written."""

    def __init__(self, folder: Path, manifest: BM25Manifest, backend: LexicalBackend, action: str) -> None:
        self.folder, self.manifest, self.backend = folder, manifest, backend
        self.generation = manifest.generation + 1
        self.parts = list(manifest.docstore_parts) or [whole_store_part(folder, manifest)]
        self.readers = [PartReader(folder, part, count=False) for part in self.parts]
        self.deleting: dict[int, set[int]] = {}  # part position -> rows this update deletes
        self.updater: LexicalUpdater = backend.updater(folder, manifest.settings, manifest.segments)
        self.next_row = self.new_start = max(self.parts[-1].row_stop, next_row(manifest.segments))
        self.new_name = segment_file(self.generation, DOCSTORE_NAME)
        self.new_store: DocStore | None = None
        self.new_stored = 0
        self.written: list[str] = []  # deletion files this update wrote
        self.report = BM25UpdateReport(action=action)
        self.source: str | None = None
        self.compact_now = False
        self.removed_ids: set[str] = set()

    def upsert(self, documents: list[Document]) -> None:
        last = {doc.id: position for position, doc in enumerate(documents)}  # a repeated id: the last one wins
        documents = [documents[position] for position in sorted(last.values())]
        check_document_ids([doc.id for doc in documents], source=self.source)
        replaced = self._delete([doc.id for doc in documents])
        rows = list(range(self.next_row, self.next_row + len(documents)))
        if self.new_store is None:
            self.new_store = DocStore(self.folder / self.new_name, readonly=False)
        self.new_store.add(rows, documents)
        self.updater.add(documents, rows)
        self.next_row += len(documents)
        self.new_stored += len(documents)
        self.report.replaced += replaced
        self.report.added += len(documents) - replaced

    def remove(self, ids: list[str]) -> None:
        removed = self._delete(ids)
        self.report.missing += [doc_id for doc_id in dict.fromkeys(ids) if doc_id not in self.removed_ids]
        self.report.removed += removed

    def _delete(self, ids: list[str]) -> int:
        existing = live_rows_of(self.readers, ids, self.deleting, self.new_store)
        fresh = [row for position, row in existing.values() if position < 0]
        for position, row in existing.values():
            if position >= 0:
                self.deleting.setdefault(position, set()).add(row)
        if fresh and self.new_store is not None:  # added earlier in this update: our own new file
            self.new_store.delete_rows(fresh)
            self.new_stored -= len(fresh)
        if existing:
            self.updater.remove(list(existing), [row for _, row in existing.values()])
            self.removed_ids.update(existing)
        return len(existing)

    def _write_parts(self) -> list[DocstorePart]:
        """The parts after this update: deletion files written for the parts it touched, its new part closed;
        parts left without live documents dropped (one is always kept: no parts reads as `docstore.sqlite`)."""
        parts: list[DocstorePart] = []
        for position, (part, reader) in enumerate(zip(self.parts, self.readers, strict=True)):
            rows = self.deleting.get(position)
            if rows:
                union = np.union1d(reader.deleted, np.fromiter(sorted(rows), dtype=np.int64, count=len(rows)))
                name = segment_file(part.id, f"del-{self.generation:06d}.npy")
                save_deleted_rows(self.folder / name, union)
                self.written.append(name)
                part = part.model_copy(update={"deleted": name, "num_deleted": len(union)})
            parts.append(part)
        if self.new_store is not None:
            self.new_store.close()
            self.new_store = None
            parts.append(DocstorePart(id=self.generation, docstore=self.new_name, row_start=self.new_start,
                                      row_stop=self.next_row, num_stored=self.new_stored))
        return [part for part in parts if part.num_docs > 0] or parts[-1:]

    def _compact_store(self, parts: list[DocstorePart], segments: list[BM25Segment]) -> tuple[list[BM25Segment], int]:
        """Compact the backend, then write the live documents as one new `docstore.sqlite` (rows renumbered
        0, 1, … where the backend renumbers them), replacing the parts in the new folder."""
        fresh = self.folder / f"compact.tmp-{DOCSTORE_NAME}"
        live = SegmentedDocStore([PartReader(self.folder, part, count=False) for part in parts])
        try:
            segments = self.backend.compact(self.folder, self.manifest.settings, segments, live)
            store = DocStore(fresh, readonly=False)
            try:
                iterator = live.iter_documents()
                count = 0
                while batch := list(islice(iterator, CHUNK)):
                    rows = (range(count, count + len(batch)) if self.backend.renumbers_rows
                            else [row for row, _ in batch])
                    store.add(rows, [document for _, document in batch])
                    count += len(batch)
            finally:
                store.close()
        finally:
            live.close()
        crash_point("bm25-compact-store-written")
        for part in parts:
            for name in part.files():
                (self.folder / name).unlink(missing_ok=True)
        os.replace(fresh, self.folder / DOCSTORE_NAME)
        return segments, count

    def finish(self, old: Path, merge: bool) -> None:
        from embedkit import __version__

        parts = self._write_parts()
        self.close()
        before = {name for part in self.parts for name in part.files()} | set(self.written)
        for name in before - {name for part in parts for name in part.files()}:
            (self.folder / name).unlink(missing_ok=True)  # a deletion file replaced, a part left empty
        crash_point("bm25-parts-written")
        segments = self.updater.finish()
        crash_point("bm25-backend-written")
        settings = self.manifest.settings
        documents = sum(segment.documents for segment in segments)
        deleted = sum(segment.deleted for segment in segments)
        num_docs = sum(part.num_docs for part in parts)
        if self.compact_now or (merge and settings.merge.due(len(segments), documents, deleted)):
            segments, num_docs = self._compact_store(parts, segments)
            parts = []
            self.report.compacted = True
            self.report.removed += deleted if self.compact_now else 0
            crash_point("bm25-compacted")
        report = self.report
        report.num_docs, report.segments = num_docs, segments
        data = self.manifest.model_dump()
        data.update(
            format_version=SEGMENTED_FORMAT, generation=self.generation, embedkit_version=__version__,
            num_docs=num_docs, segments=[segment.model_dump() for segment in segments],
            docstore_parts=[part.model_dump() for part in parts],
            files={name: record.model_dump() for name, record in _records(self.folder, old,
                                                                        self.manifest.files).items()},
            history=[*data["history"], HistoryEntry(
                action=report.action, documents=report.added + report.replaced or report.removed,
                source=self.source, added=report.added, replaced=report.replaced, removed=report.removed,
                missing=len(report.missing), segments=len(segments), compacted=report.compacted,
                num_docs=num_docs).model_dump()])
        try:
            manifest = BM25Manifest.model_validate(data)
        except ValidationError as error:  # a bug, or a folder whose counts were wrong before this update
            raise IndexFormatError(f"index {old}: the update would record an inconsistent manifest ({error}); "
                                   "nothing was changed; run `embedkit index verify`") from None
        manifest.save(self.folder)

    def close(self) -> None:
        if self.new_store is not None:
            self.new_store.close()
        for reader in self.readers:
            reader.close()


def check_update_folder(path: Path, manifest: BM25Manifest) -> None:
    """What an update checks before it reads a folder: every recorded file present with its size (each part's
    rows are checked as the update reads it); a folder without parts also has its one document store counted,
    once, before it becomes part 0."""
    if manifest.docstore_parts:
        manifest.check_files(path)
    else:
        check_folder(path, manifest)


@contextlib.contextmanager
def _update(path: Path, action: str, source: str | None, *, merge: bool) -> Iterator[_Update]:
    with folder_lock(path):
        manifest = BM25Manifest.load(path)
        check_update_folder(path, manifest)
        backend = get_backend(manifest.settings.backend)
        with atomic_directory(path, overwrite=True, marker=MANIFEST_NAME, what="embedkit index") as folder:
            for name in manifest.files:
                _link(path / name, folder / name)  # document-store parts too: an update never writes them
            crash_point("bm25-linked")
            update = _Update(folder, manifest.model_copy(deep=True), backend, action)
            try:
                update.source = source
                yield update
                update.finish(path, merge)
            finally:
                update.close()


def _link(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` (files of a segment never change), or a copy where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(source, target)


def _records(folder: Path, old: Path, recorded: dict[str, FileRecord]) -> dict[str, FileRecord]:
    """Every file of `folder` with its size and checksum; a file that is still a link to the old folder's file
    of that name keeps its recorded checksum (same inode: same bytes), so only new files are hashed."""
    records: dict[str, FileRecord] = {}
    for item in sorted(folder.rglob("*")):
        if not item.is_file() or item.name in UNTRACKED_FILES or ".tmp-" in item.name:
            continue
        name = item.relative_to(folder).as_posix()
        info = item.stat()
        previous = recorded.get(name)
        if previous is not None and previous.sha256 is not None and previous.size == info.st_size:
            with contextlib.suppress(OSError):
                before = (old / name).stat()
                if (before.st_dev, before.st_ino) == (info.st_dev, info.st_ino):
                    records[name] = previous
                    continue
        records[name] = FileRecord(size=info.st_size, sha256=file_sha256(item))
    return records


def set_merge_policy(path: str | Path, policy: BM25MergePolicy | None = None, *, never: bool = False,
                     max_segments: int | None = None, max_deleted_fraction: float | None = None) -> BM25MergePolicy:
    """Record when updates compact the index (`BM25Settings.merge`, `embedkit.index.merge_policy`); only the
    manifest changes. Returns the policy recorded.

    `policy` replaces the recorded one. Without it, `never=True` turns both rules off, and the limits given
    replace the recorded ones (`MergePolicy.with_changes`: a policy that was off starts from the defaults).
    """
    path = Path(path)
    with folder_lock(path):
        manifest = BM25Manifest.load(path)
        check_update_folder(path, manifest)
        if policy is None:
            limits = {name: value for name, value in (("max_segments", max_segments),
                                                      ("max_deleted_fraction", max_deleted_fraction))
                      if value is not None}
            try:
                policy = manifest.settings.merge.with_changes("never" if never else None, **limits)
            except ValueError as error:
                from embedkit.errors import EmbedkitError

                raise EmbedkitError(str(error)) from None
        manifest.settings = manifest.settings.model_copy(update={"merge": policy})
        manifest.history.append(HistoryEntry(action="merge-policy", mode=policy.mode,
                                             max_segments=policy.max_segments,
                                             max_deleted_fraction=policy.max_deleted_fraction))
        manifest.save(path)  # atomically: readers see the old manifest or this one
    return policy
