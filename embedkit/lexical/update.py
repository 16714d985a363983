"""Update a BM25 index folder in place of a rebuild: add/upsert, remove, compact, for both backends.

    from embedkit.data import iter_documents
    from embedkit.lexical.update import add_documents, compact_index, remove_documents

    add_documents("indexes/bm25", iter_documents("new.jsonl"))    # new ids inserted, known ids replaced
    remove_documents("indexes/bm25", ["doc7", "doc9"])
    compact_index("indexes/bm25")                                # one segment, deleted documents dropped

An update writes only what changes. The backends keep segments whose files never change once written
(Lucene's own; bm25s token segments, `embedkit.lexical.bm25s_segments`), so the new folder is made of hard
links to the old folder's files, a copy of the document store, and the new segment or deletion files; the
manifest reuses the checksums of the linked files and hashes only the new ones. The folder is then swapped in
whole (`embedkit.io.atomic_directory`), under the folder's lock: a killed update leaves the old index or the new
one, never a mix, and a reader that opened the old folder keeps reading it. What an update reads whole (the
document store) has its checksum checked first; the other files their sizes (`embedkit index verify` checks
every byte).

After an update the merge policy (`BM25Settings.merge`) decides whether to compact at once.
`EMBEDKIT_CRASH_AT` (see `embedkit.io`) also stops an update at the steps in `UPDATE_STEPS`.
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

from embedkit.data.corpus import Document
from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.kinds import check_document_ids, check_folder
from embedkit.index.lifecycle import UpdateReport
from embedkit.index.manifest import (
    MANIFEST_NAME,
    UNTRACKED_FILES,
    BM25Manifest,
    FileRecord,
    HistoryEntry,
    file_sha256,
)
from embedkit.io import atomic_directory, crash_point, folder_lock
from embedkit.lexical.backends import LexicalBackend, LexicalUpdater, get_backend
from embedkit.lexical.bm25s_segments import next_row
from embedkit.lexical.segments import BM25Segment, summarize
from embedkit.lexical.settings import BM25MergePolicy

#: Steps of an update where `EMBEDKIT_CRASH_AT` kills the process (besides `embedkit.io.SWAP_STEPS`).
UPDATE_STEPS = ("bm25-linked", "bm25-backend-written", "bm25-compacted")
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


class _Update:
    """An update of the copy `folder` of a BM25 index folder."""

    def __init__(self, folder: Path, manifest: BM25Manifest, backend: LexicalBackend, action: str) -> None:
        self.folder, self.manifest, self.backend = folder, manifest, backend
        self.store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        self.updater: LexicalUpdater = backend.updater(folder, manifest.settings, manifest.segments)
        self.next_row = max(self.store.next_row(), next_row(manifest.segments))
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
        self.store.add(rows, documents)
        self.updater.add(documents, rows)
        self.next_row += len(documents)
        self.report.replaced += replaced
        self.report.added += len(documents) - replaced

    def remove(self, ids: list[str]) -> None:
        removed = self._delete(ids)
        self.report.missing += [doc_id for doc_id in dict.fromkeys(ids) if doc_id not in self.removed_ids]
        self.report.removed += removed

    def _delete(self, ids: list[str]) -> int:
        existing = self.store.row_of(ids)
        if existing:
            self.store.delete_rows(existing.values())
            self.updater.remove(list(existing), list(existing.values()))
            self.removed_ids.update(existing)
        return len(existing)

    def finish(self, old: Path, merge: bool) -> None:
        from embedkit import __version__

        self.store.close()
        segments = self.updater.finish()
        crash_point("bm25-backend-written")
        settings = self.manifest.settings
        documents = sum(segment.documents for segment in segments)
        deleted = sum(segment.deleted for segment in segments)
        if self.compact_now or (merge and settings.merge.due(len(segments), documents, deleted)):
            segments = self.backend.compact(self.folder, settings, segments, self.folder / DOCSTORE_NAME)
            self.report.compacted = True
            self.report.removed += deleted if self.compact_now else 0
            crash_point("bm25-compacted")
        store = DocStore(self.folder / DOCSTORE_NAME)
        try:
            num_docs = len(store)
        finally:
            store.close()
        report = self.report
        report.num_docs, report.segments = num_docs, segments
        manifest = self.manifest
        manifest.num_docs, manifest.segments, manifest.embedkit_version = num_docs, segments, __version__
        manifest.history.append(HistoryEntry(
            action=report.action, documents=report.added + report.replaced or report.removed, source=self.source,
            added=report.added, replaced=report.replaced, removed=report.removed, missing=len(report.missing),
            segments=len(segments), compacted=report.compacted, num_docs=num_docs))
        manifest.files = _records(self.folder, old, manifest.files)
        manifest.save(self.folder)


@contextlib.contextmanager
def _update(path: Path, action: str, source: str | None, *, merge: bool) -> Iterator[_Update]:
    with folder_lock(path):
        manifest = BM25Manifest.load(path)
        check_folder(path, manifest)  # every recorded file present with its size; the document count
        _check_docstore(path, manifest)
        backend = get_backend(manifest.settings.backend)
        with atomic_directory(path, overwrite=True, marker=MANIFEST_NAME, what="embedkit index") as folder:
            for name in manifest.files:
                if name != DOCSTORE_NAME:
                    _link(path / name, folder / name)
            shutil.copyfile(path / DOCSTORE_NAME, folder / DOCSTORE_NAME)  # changed in place by SQLite: copied
            crash_point("bm25-linked")
            update = _Update(folder, manifest.model_copy(deep=True), backend, action)
            update.source = source
            yield update
            update.finish(path, merge)


def _check_docstore(path: Path, manifest: BM25Manifest) -> None:
    """The update copies and changes the document store: its bytes must be the ones recorded."""
    record = manifest.files.get(DOCSTORE_NAME)
    if record is not None and record.sha256 is not None and file_sha256(path / DOCSTORE_NAME) != record.sha256:
        raise IndexFormatError(f"index {path} is damaged: {path / DOCSTORE_NAME} does not match the checksum recorded "
                               f"in {MANIFEST_NAME} (its bytes changed since it was written); rebuild the index")


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


def set_merge_policy(path: str | Path, *, never: bool = False, max_segments: int | None = None,
                     max_deleted_fraction: float | None = None) -> BM25MergePolicy:
    """Record when updates compact the index (`BM25Settings.merge`); only the manifest changes.

    `never=True` turns both rules off; otherwise the given limits replace the recorded ones (a policy that was
    off starts again from the defaults).
    """
    path = Path(path)
    with folder_lock(path):
        manifest = BM25Manifest.load(path)
        check_folder(path, manifest)
        current = manifest.settings.merge
        if never:
            policy = BM25MergePolicy(max_segments=None, max_deleted_fraction=None)
        else:
            if current.max_segments is None and current.max_deleted_fraction is None:
                current = BM25MergePolicy()
            changes = {name: value for name, value in (("max_segments", max_segments),
                                                       ("max_deleted_fraction", max_deleted_fraction))
                       if value is not None}
            policy = BM25MergePolicy.model_validate({**current.model_dump(), **changes})
        manifest.settings = manifest.settings.model_copy(update={"merge": policy})
        manifest.history.append(HistoryEntry(action="merge-policy", max_segments=policy.max_segments,
                                             max_deleted_fraction=policy.max_deleted_fraction))
        manifest.save(path)  # atomically: readers see the old manifest or this one
    return policy
