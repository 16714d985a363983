"""Segmented dense index folders (Lucene-style): updates write new files and swap a small manifest.

Design note — the layout (manifest `format_version` 3, `DenseManifest.segments`)::

    indexes/mine/
      manifest.json                   the commit point: live segments, every file's size and SHA-256
      index.faiss  docstore.sqlite    segment 0 of a folder built whole or converted from the one-segment
      vectors.f16  deleted.npy          layout: its files keep their old names (nothing is copied)
      seg-000003.faiss                segment 3 (written by the commit of generation 3): FAISS index,
      seg-000003.docstore.sqlite        its document rows, and its stored vectors when the folder keeps them
      seg-000003.vectors.f16
      seg-000000.del-000005.npy       deletion file of segment 0 written by generation 5: sorted int64 rows
      trained-000001.faiss            IVF/PQ: the trained empty index every new segment starts from

- **Rows.** Every document has a global row id (FAISS id), unique in the folder; `next_row` is the next one.
  A segment owns the rows [row_start, row_stop) (segments are disjoint and listed in row order); its FAISS
  file holds vectors under their global rows and its vectors file holds row r at offset r - row_start.
- **Manifest fields** per segment (`SegmentRecord`): `id`, `faiss`, `docstore`, `vectors`, `deleted` (file
  names), `row_start`, `row_stop`, `num_vectors` (FAISS ntotal), `num_stored` (document store rows),
  `num_deleted` (rows the deletion file lists) and `num_docs` (live). Folder-wide: `generation` (commits so
  far; new files are named by the next one, so a name is never reused), `trained_index`, `trained_rows` and
  `added_since_training` (IVF/PQ: retraining is due once the index grew past twice what it was trained on),
  `merge_policy`.
- **Live documents** are the stored rows of a segment not listed in its deletion file. A segment's files never
  change; a removal writes a new deletion file for each segment it touches, an add writes a new segment
  (and deletion files for the ids it replaces). Search runs on every segment, masking deleted rows, and
  merges the top k by score, ties broken by global row (lower first): exactly what one index holding the same
  documents in the same row order answers (Flat; IVF at nprobe = nlist; HNSW per segment graph).
- **Commit** (`embedkit.index.segments_update`): under the folder lock, write the new files under fresh names,
  fsync them and the folder, then replace `manifest.json` atomically. A crash before the replace leaves the
  old manifest (the new files are garbage); after it, the new one. Files no manifest references are removed
  by the next update, under the lock, and only those whose names embedkit gives (`seg-*`, `trained-*`, and
  the one-segment layout's names once segment 0 was merged away).
- **Checks.** Opening checks sizes (a stat per file), the FAISS shapes and the document store counts;
  `embedkit index verify` reads every byte; an update hashes only the files it reads whole or writes.
- An old folder (no `segments`, format 1 or 2) is read as one segment (`legacy_segment`) and converted by
  its first update, in place: its files become segment 0.

    from embedkit.index.segments import segment_status
    segment_status(Path("indexes/mine"), DenseManifest.load("indexes/mine"))   # what `embedkit index info` shows
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.docstore_parts import (  # SegmentedDocStore: read through this module too
    SegmentedDocStore,  # noqa: F401
    check_part_store,
    load_part_deletions,
)
from embedkit.index.faiss_ops import read_faiss_file, reconstruct_rows
from embedkit.index.manifest import DELETED_NAME, FAISS_NAME, DenseManifest, SegmentRecord
from embedkit.index.masked import load_deleted_rows

if TYPE_CHECKING:
    from embedkit.index.torch_search import TorchExactSearch

#: Segmented commits: where `EMBEDKIT_CRASH_AT` can kill an update (fault-injection tests).
SEGMENT_STEPS = (
    "segment-written",   # the new segment / deletion files are written, not yet synced
    "segment-synced",    # they and the folder are fsynced; the old manifest still rules
    "manifest-swapped",  # manifest.json replaced: the update is committed
    "collected",         # unreferenced files removed
    "merge-written",     # the same three steps for a merge the policy runs after an update
    "merge-synced",
    "merge-swapped",
)


def legacy_segment(folder: Path, manifest: DenseManifest) -> SegmentRecord:
    """The one segment of a folder in the one-segment layout (`index.faiss`, `docstore.sqlite`, …)."""
    deleted = folder / DELETED_NAME
    masked = len(load_deleted_rows(deleted, manifest.next_row)) if deleted.is_file() else 0
    try:
        return SegmentRecord(id=0, faiss=FAISS_NAME, docstore=DOCSTORE_NAME,
                             vectors=manifest.vectors.file if manifest.vectors else None,
                             deleted=DELETED_NAME if masked else None, row_start=0, row_stop=manifest.next_row,
                             num_vectors=manifest.num_docs + masked, num_stored=manifest.num_docs,
                             num_deleted=masked, num_docs=manifest.num_docs)
    except ValidationError:
        raise IndexFormatError(f"index {folder} is damaged: {manifest.num_docs} documents and {masked} masked rows "
                               f"cannot have rows below next_row {manifest.next_row}; rebuild the index") from None


def segment_records(folder: Path, manifest: DenseManifest) -> list[SegmentRecord]:
    """The live segments of a folder: the manifest's, or the one segment of the old layout."""
    return list(manifest.segments) if manifest.segments else [legacy_segment(folder, manifest)]


@dataclass(frozen=True)
class SegmentParts:
    """The opened parts of one segment (None: not read): what a reopen hands from one reader to the next."""

    faiss_index: Any = None
    docstore: DocStore | None = None
    deleted: np.ndarray | None = None
    torch_search: TorchExactSearch | None = None


def asdict_shallow(parts: SegmentParts) -> dict[str, Any]:
    """`parts` as a dict of the very objects it holds (dataclasses.asdict would deep-copy them)."""
    return {name: getattr(parts, name) for name in SegmentParts.__dataclass_fields__}


class SegmentReader:
    """One segment, opened for search: FAISS index, document store, deleted rows, stored vectors."""

    def __init__(self, folder: Path, manifest: DenseManifest, record: SegmentRecord, *, mmap: bool = False,
                 backend: str = "faiss", count: bool = True, search_device: str = "auto") -> None:
        self.folder, self.manifest, self.record = folder, manifest, record
        self._mmap, self._backend, self._search_device = mmap, backend, search_device
        self._count = count  # an update skips counting the store's rows (a scan): its cost follows the change

    @cached_property
    def faiss_index(self):
        index = read_faiss_file(self.folder / self.record.faiss, mmap=self._mmap, on_disk=self.manifest.on_disk)
        dim = self.manifest.encoder.dim
        from embedkit.index.faiss_ops import faiss_metric

        where = self.folder / self.record.faiss
        if index.d != dim or index.metric_type != faiss_metric(self.manifest.metric):
            raise IndexFormatError(f"index {self.folder} is damaged: {where} does not hold {dim}-dimensional "
                                   f"{self.manifest.metric!r} vectors as the manifest records; rebuild the index")
        if index.ntotal != self.record.num_vectors:
            raise IndexFormatError(f"index {self.folder} is damaged: {where} holds {index.ntotal} vectors, the "
                                   f"manifest records {self.record.num_vectors}; rebuild the index")
        if self._backend == "faiss-gpu":
            from embedkit.index.faiss_ops import to_gpus

            index = to_gpus(index)
        return index

    @cached_property
    def docstore(self) -> DocStore:
        store = DocStore(self.folder / self.record.docstore, read_all=self._count)
        check_part_store(store, self.folder, count=self.record.num_stored if self._count else None,
                         rows=(self.record.row_start, self.record.row_stop), next_row=self.manifest.next_row)
        return store

    @cached_property
    def deleted(self) -> np.ndarray:
        """Sorted rows of this segment that are deleted (masked in FAISS, hidden in the store)."""
        return load_part_deletions(self.folder, self.record.deleted, (self.record.row_start, self.record.row_stop),
                                   self.record.num_deleted)

    @cached_property
    def deleted_set(self) -> frozenset[int]:
        return frozenset(self.deleted.tolist())

    def open_files(self) -> None:
        _ = self.faiss_index, self.docstore, self.deleted

    @cached_property
    def torch_search(self) -> TorchExactSearch:
        """Exact torch search (backend "torch") over every stored row; deleted ones are masked (`torch_live`), so
        a new deletion file changes the mask, never the matrix."""
        from embedkit.index.torch_search import TorchExactSearch

        rows = np.fromiter(sorted(self.docstore.ids_by_row()), dtype=np.int64)
        return TorchExactSearch(self.vectors(rows), rows, metric=self.manifest.metric, device=self._search_device)

    @cached_property
    def torch_live(self) -> Any:
        """`torch_search`'s mask of live rows (None: none deleted)."""
        return self.torch_search.live_mask(self.deleted)

    def opened(self) -> SegmentParts:
        """What this reader has read so far (None: not yet), for a reopen to hand over (`embedkit.index.reopen`)."""
        return SegmentParts(**{name: vars(self).get(name) for name in SegmentParts.__dataclass_fields__})

    def adopt(self, parts: SegmentParts) -> None:
        """Use `parts` (another reader's `opened()` of the very same files) instead of reading them again."""
        for name, value in asdict_shallow(parts).items():
            if value is not None:
                vars(self)[name] = value

    def live_rows(self) -> np.ndarray:
        rows = np.fromiter(sorted(self.docstore.ids_by_row()), dtype=np.int64)
        return rows[~np.isin(rows, self.deleted)]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of global `rows` of this segment: the stored copy, else reconstructed from FAISS."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.record.vectors is not None:
            stored = self.manifest.vectors
            dtype = np.dtype(stored.dtype if stored else "float32")
            path = self.folder / self.record.vectors
            span = self.record.row_stop - self.record.row_start
            if path.stat().st_size != span * self.manifest.encoder.dim * dtype.itemsize:
                raise IndexFormatError(f"index {self.folder} is damaged: {path} does not hold {span} rows of "
                                       f"{self.manifest.encoder.dim} {dtype} values; rebuild the index")
            if len(rows) == 0:
                return np.zeros((0, self.manifest.encoder.dim), dtype=np.float32)
            matrix = np.memmap(path, dtype=dtype, mode="r").reshape(-1, self.manifest.encoder.dim)
            return np.asarray(matrix[rows - self.record.row_start], dtype=np.float32)
        return reconstruct_rows(self.faiss_index, rows)

    def close(self) -> None:
        if "docstore" in self.__dict__:
            self.docstore.close()


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The best k of per-segment (scores, rows) results: by score, then by global row (the tie rule)."""
    if not parts:
        raise ValueError("no segment results to merge")
    scores = np.concatenate([part[0] for part in parts], axis=1)
    rows = np.concatenate([part[1] for part in parts], axis=1)
    better = -scores if metric == "ip" else scores  # FAISS l2 scores are distances
    key = np.where(rows < 0, np.inf, better.astype(np.float64))
    order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), key), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def search_with_ties(run: Callable[[int], tuple[np.ndarray, np.ndarray]], k: int, ntotal: int, metric: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The top k of `run(depth)` (a FAISS search `depth` deep) under the tie rule of `merge_top_k`.

    FAISS keeps an arbitrary one of several equal scores at the k-th place; searching one deeper shows whether
    equal scores straddle it, and the search deepens (doubling) until they do not, so the rule picks among all.
    """
    depth = min(k + 1, ntotal)
    while True:
        scores, rows = run(depth)
        if depth >= ntotal or scores.shape[1] <= k:
            break
        straddling = (scores[:, k - 1] == scores[:, -1]) & (rows[:, -1] >= 0)
        if not straddling.any():
            break
        depth = min(ntotal, depth * 2)
    return merge_top_k([(scores, rows)], k, metric)


def search_segments(segments: Sequence[SegmentReader], vectors: np.ndarray, k: int, *, metric: str,
                    nprobe: int | None = None, ef_search: int | None = None, backend: str = "faiss"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Search every segment (deleted rows masked) and merge: `merge_top_k`. `backend` "torch" searches each
    segment's `torch_search` instead of its FAISS index (same rows, same tie rule)."""
    from embedkit.index.faiss_ops import search as faiss_search

    def searcher(segment: SegmentReader) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
        if backend == "torch":
            return lambda depth: segment.torch_search.search(vectors, depth, live=segment.torch_live)
        return lambda depth: faiss_search(segment.faiss_index, vectors, depth, nprobe=nprobe, ef_search=ef_search,
                                          exclude=segment.deleted)

    parts = []
    for segment in segments:
        if segment.record.num_docs == 0:
            continue
        total = segment.torch_search.ntotal if backend == "torch" else segment.faiss_index.ntotal
        if total == 0:
            continue
        parts.append(search_with_ties(searcher(segment), k, total, metric))
    if not parts:
        return np.full((len(vectors), 1), -np.inf, dtype=np.float32), np.full((len(vectors), 1), -1, dtype=np.int64)
    return merge_top_k(parts, k, metric)


def check_segments(folder: Path, manifest: DenseManifest) -> None:
    """The cheap checks of a segmented folder: every recorded file present with its size."""
    manifest.check_files(folder)


def segment_status(folder: Path, manifest: DenseManifest) -> dict[str, Any]:
    """Segments with their documents, deleted fractions and bytes, and whether retraining is due (no reads)."""
    records = segment_records(folder, manifest)
    sizes = {name: record.size for name, record in manifest.files.items()}
    listed = []
    for record in records:
        dead = record.num_vectors - record.num_docs
        listed.append({"id": record.id, "documents": record.num_docs, "rows": [record.row_start, record.row_stop],
                       "deleted_fraction": round(dead / record.num_vectors, 4) if record.num_vectors else 0.0,
                       "bytes": sum(sizes.get(name, 0) for name in record.files())})
    status: dict[str, Any] = {"layout": "segmented" if manifest.segments else "single", "segments": listed,
                              "merge_policy": manifest.merge_policy.model_dump()}
    if manifest.trained_index is not None or manifest.train_sample:
        status["added_since_training"] = manifest.added_since_training
        status["retrain_due"] = retrain_due(manifest)
    return status


def retrain_due(manifest: DenseManifest) -> bool:
    """True once new segments added more vectors than the index held when trained (its centroids and codebooks
    describe half the corpus or less): `embedkit index compact` retrains."""
    trained = manifest.trained_rows if manifest.trained_rows is not None else manifest.num_docs
    return manifest.added_since_training > max(trained, 1)
