"""Dense FAISS indexes: build from a corpus (streaming) or from precomputed vectors, load, search.

    from embedkit.data import iter_documents
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import Index, build_dense_index

    encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
    build_dense_index(iter_documents("corpus.jsonl"), encoder, "indexes/mine", factory="HNSW32")
    hits = Index.load("indexes/mine").search("a query", k=10)[0]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedkit.data.corpus import Document
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding.config import Backend, EncoderConfig, EncoderSpec
from embedkit.errors import EmbedkitError, IndexFormatError, ModelMismatchError
from embedkit.index.base import Index, check_k
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.faiss_ops import (
    add_vectors,
    append_ivf_entries,
    calibrate_search,
    check_factory,
    create_index,
    exact_top_k,
    faiss_row_ids,
    ivf_of,
    read_faiss_file,
    reconstruct_rows,
    reserve_rows,
    search_defaults,
    stores_exact_vectors,
    to_gpus,
    train_index,
)
from embedkit.index.faiss_ops import search as faiss_search
from embedkit.index.kinds import VerifyReport, check_document_ids, verify_folder
from embedkit.index.manifest import (
    DELETED_NAME,
    FAISS_NAME,
    IVFDATA_NAME,
    MANIFEST_NAME,
    VECTOR_FILES,
    DenseManifest,
    HistoryEntry,
    MergePolicy,
    SearchCalibration,
    SearchDefaults,
    SegmentRecord,
    StoredVectors,
)
from embedkit.index.masked import load_deleted_rows
from embedkit.index.segments import (
    SegmentedDocStore,
    SegmentParts,
    SegmentReader,
    search_segments,
    search_with_ties,
    segment_records,
)
from embedkit.io import atomic_directory
from embedkit.passage import Passage

if TYPE_CHECKING:
    from embedkit.encoding.encoder import Encoder

VECTORS_SCRATCH = "vectors.f32"
TRAINED_NAME = "trained-{generation:06d}.faiss"  # named by the generation that wrote it (manifest.TRAINED_FILE)
BACKENDS = ("faiss", "faiss-gpu", "torch")
DEFAULT_TRAIN_SAMPLE = 100_000
StoreVectors = Literal["auto", "float16", "float32", "none"]


class DenseBuildOptions(BaseModel):
    """How `embedkit index build --kind dense` encodes and indexes a corpus."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    factory: str = "Flat"
    metric: Literal["ip", "l2"] = "ip"
    train_sample: int = Field(DEFAULT_TRAIN_SAMPLE, ge=1)
    store_vectors: StoreVectors = "auto"
    on_disk: bool = False


class DenseOpenOptions(BaseModel):
    """How a dense index is opened: the query encoder's runtime and the search backend."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    encoder: Any = Field(None, description="an already loaded Encoder with the index's weights")
    model: str | None = Field(None, description="local copy of the index's model (same weights)")
    device: str = "auto"
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    backend: Literal["faiss", "faiss-gpu", "torch"] = "faiss"
    search_device: str = "auto"
    mmap: bool = False
    encoder_backend: Backend = Field("torch", description="what runs the query encoder: torch or onnx")


def build_dense_index(
    documents: Iterable[Document],
    encoder: Encoder,
    out: str | Path,
    *,
    factory: str = "Flat",
    metric: str = "ip",
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    overwrite: bool = False,
    total: int | None = None,
    quiet: bool = False,
    corpus: str | None = None,
    store_vectors: str = "auto",
    on_disk: bool = False,
) -> Path:
    """Encode `documents` and write an index folder at `out` atomically. Returns `out`.

    `on_disk=True` (IVF factories) keeps the inverted lists in `index.ivfdata`, read from disk at search time
    (FAISS `OnDiskInvertedLists`), for corpora larger than RAM.
    """
    check_factory(factory)
    create_index(encoder.dim, factory, metric)  # fail on a bad factory string before spending time encoding
    chunks = encoder.iter_encoded(documents, total=total, quiet=quiet)
    return _write(out, chunks, encoder.spec, factory=factory, metric=metric, train_sample=train_sample,
                  overwrite=overwrite, corpus=corpus, store_vectors=store_vectors, on_disk=on_disk,
                  truncated=lambda: getattr(encoder, "truncated_documents", None))


def write_dense_index(
    out: str | Path,
    vectors: np.ndarray,
    documents: Sequence[Document],
    spec: EncoderSpec,
    *,
    factory: str = "Flat",
    metric: str = "ip",
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    overwrite: bool = False,
    corpus: str | None = None,
    store_vectors: str = "auto",
    on_disk: bool = False,
) -> Path:
    """Write an index folder from vectors computed elsewhere (e.g. a multimodal encoder).

    `spec` describes the encoder so queries can be encoded the same way later.
    """
    if len(vectors) != len(documents):
        raise EmbedkitError(f"{len(vectors)} vectors for {len(documents)} documents")
    if len(documents) == 0:
        raise EmbedkitError("cannot build an index with no documents")
    check_factory(factory)
    return _write(out, [(list(documents), np.asarray(vectors, dtype=np.float32))], spec, factory=factory,
                  metric=metric, train_sample=train_sample, overwrite=overwrite, corpus=corpus,
                  store_vectors=store_vectors, on_disk=on_disk)


def _write(
    out: str | Path,
    chunks: Iterable[tuple[list[Document], np.ndarray]],
    spec: EncoderSpec,
    *,
    factory: str,
    metric: str,
    train_sample: int,
    overwrite: bool,
    corpus: str | None,
    store_vectors: str = "auto",
    history: list[HistoryEntry] | None = None,
    action: str = "build",
    entry: HistoryEntry | None = None,
    created_at: str | None = None,
    on_disk: bool = False,
    truncated=None,
    merge_policy: MergePolicy | None = None,
    generation: int = 0,
) -> Path:
    """Write an index folder from streamed (documents, vectors) chunks; rows are numbered 0..n-1 in order.

    `store_vectors` keeps a copy of the vectors in the folder ("float16", "float32", "none"; "auto" keeps
    float16 only for lossy kinds such as PQ/SQ), so updates, compaction and merges never need to re-encode.
    The manifest's history is `history` and then `entry` (default: an `action` entry), with the document count.
    """
    import faiss

    from embedkit import __version__

    if store_vectors not in ("auto", *VECTOR_FILES, "none"):
        raise EmbedkitError(f"unknown vector storage '{store_vectors}' (auto, float16, float32 or none)")
    if metric not in ("ip", "l2"):
        raise EmbedkitError(f"unknown metric '{metric}' (ip or l2)")
    check_factory(factory)
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite, marker=MANIFEST_NAME, what="embedkit index") as folder:
        store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        scratch = folder / VECTORS_SCRATCH
        count = 0
        # Vectors go to disk chunk by chunk, so memory holds one chunk of text and one of vectors.
        with open(scratch, "wb") as handle:
            for docs, vectors in chunks:
                if vectors.shape[1] != spec.dim:
                    raise EmbedkitError(f"encoder produced dim {vectors.shape[1]}, expected {spec.dim}")
                check_document_ids([doc.id for doc in docs], source=corpus, start=count)
                store.add(range(count, count + len(docs)), docs)
                handle.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                count += len(docs)
        store.close()
        if count == 0:
            raise EmbedkitError("cannot build an index with no documents")
        index = create_index(spec.dim, factory, metric)
        template = None
        if not index.is_trained:
            matrix = np.memmap(scratch, dtype=np.float32, mode="r", shape=(count, spec.dim))
            trained_on = train_index(index, matrix, sample_size=train_sample)
            del matrix  # unmapped: its pages stop counting towards this process's memory
            if not on_disk:  # (on-disk lists are updated by merging folders, never by new segments)
                # The empty trained index every new segment copies: updates read this, never index.faiss.
                template = TRAINED_NAME.format(generation=generation)
                faiss.write_index(index, str(folder / template))
        else:
            trained_on = 0
        if on_disk:
            _add_on_disk(index, scratch, folder, spec.dim)
        else:
            reserve_rows(index, count)
            for start, part in iter_vector_file(scratch, spec.dim, np.float32):
                add_vectors(index, part, np.arange(start, start + len(part), dtype=np.int64))
        faiss.write_index(index, str(folder / FAISS_NAME))
        mode = store_vectors
        if mode == "auto":
            mode = "none" if stores_exact_vectors(index) else "float16"
        search = _calibrated_search(index, scratch, count, spec.dim, metric)
        del index
        if mode == "float32":
            pass  # the scratch file is already the float32 copy
        elif mode == "float16":
            with open(folder / VECTOR_FILES["float16"], "wb") as handle:
                for _, part in iter_vector_file(scratch, spec.dim, np.float32):
                    handle.write(part.astype(np.float16).tobytes())
            scratch.unlink()
        else:
            scratch.unlink()
        manifest = DenseManifest(
            encoder=spec,
            metric=metric,
            index_factory=factory,
            num_docs=count,
            corpus=corpus,
            embedkit_version=__version__,
            train_sample=trained_on,
            next_row=count,
            search=search,
            vectors=StoredVectors(file=VECTOR_FILES[mode], dtype=mode) if mode != "none" else None,
            on_disk=on_disk,
            truncated_documents=truncated() if truncated is not None else None,
            generation=generation,  # before trained_index: the template is named by it
            trained_index=template,
            trained_rows=count if template is not None else None,
            history=[*(history or []), (entry or HistoryEntry(action=action, source=corpus)).model_copy(
                update={"documents": count})],
        )
        if created_at is not None:
            manifest.created_at = created_at
        if merge_policy is not None:
            manifest.merge_policy = merge_policy
        # Kept through a rewrite of the folder, so segment ids (named by generation) are never reused.
        manifest.generation = generation
        manifest.record_files(folder)
        manifest.save(folder)
    return out


def _calibrated_search(index, scratch: Path, count: int, dim: int, metric: str, *, sample: int = 200,
                       seed: int = 0) -> SearchDefaults:
    """Default search parameters reaching recall@10 ≥ 0.99 on documents used as queries (see calibrate_search)."""
    if ivf_of(index) is None and not search_defaults(index):
        return SearchDefaults()
    rows = np.sort(np.random.default_rng(seed).choice(count, size=min(sample, count), replace=False))
    matrix = np.memmap(scratch, dtype=np.float32, mode="r", shape=(count, dim))
    queries = np.ascontiguousarray(matrix[rows], dtype=np.float32)
    del matrix
    truth = exact_top_k(iter_vector_file(scratch, dim, np.float32), queries, min(10, count), metric)
    found = calibrate_search(index, queries, truth)
    # Documents as queries find themselves easily, so calibration is optimistic: never go below the fixed defaults.
    for key, floor in search_defaults(index).items():
        found[key] = max(found.get(key, floor), floor)
    calibration = None
    if "calibrated_recall" in found:
        calibration = SearchCalibration(calibrated_recall=found["calibrated_recall"],
                                        target_recall=found["target_recall"])
    return SearchDefaults(nprobe=found.get("nprobe"), ef_search=found.get("ef_search"), calibration=calibration)


def _add_on_disk(index, scratch: Path, folder: Path, dim: int, *, chunk_rows: int = 262_144) -> None:
    """Fill an IVF index's lists into `index.ivfdata` one chunk at a time (memory: one chunk's lists)."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    if ivf_of(index) is None:
        raise EmbedkitError("on-disk indexes need an IVF factory, e.g. IVF4096,Flat or IVF4096,PQ64")
    parts = []
    for number, (start, part) in enumerate(iter_vector_file(scratch, dim, np.float32, chunk_rows=chunk_rows)):
        piece = faiss.clone_index(index)
        add_vectors(piece, part, np.arange(start, start + len(part), dtype=np.int64))
        parts.append(str(folder / f"part-{number}.ivf.tmp"))
        faiss.write_index(piece, parts[-1])
        del piece
    merge_ondisk(index, parts, str(folder / IVFDATA_NAME))
    for part_path in parts:
        Path(part_path).unlink()


def iter_vector_file(path: Path, dim: int, dtype, *, chunk_rows: int = 16384, start: int = 0,
                     stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Read a raw row-major vector file in chunks with plain reads (no mmap, so memory stays one chunk)."""
    dtype = np.dtype(dtype)
    row_bytes = dim * dtype.itemsize
    total = path.stat().st_size // row_bytes
    stop = total if stop is None else min(stop, total)
    with open(path, "rb") as handle:
        handle.seek(start * row_bytes)
        row = start
        while row < stop:
            take = min(chunk_rows, stop - row)
            data = np.empty((take, dim), dtype=dtype)
            if handle.readinto(data.data.cast("B")) != take * row_bytes:
                raise IndexFormatError(f"{path} is truncated")
            yield row, data.astype(np.float32, copy=False)
            row += take


class DenseIndex(Index):
    """A FAISS index with the encoder that must be used to query it.

    Options of `Index.load(path, ...)` (`DenseOpenOptions`): `backend` ("faiss"; "faiss-gpu" when faiss-gpu is
    installed; "torch": exact fp16/fp32 matrix products on `search_device`, see `embedkit.index.torch_search`),
    `mmap=True` to memory-map the FAISS file instead of reading it into RAM, and the query encoder's runtime
    (`encoder`, `model`, `device`, `batch_size`, `encoder_backend`: "torch" or "onnx").
    """

    kind = "dense"
    search_options = frozenset({"nprobe", "ef_search"})
    manifest: DenseManifest

    def __init__(self, path: Path, manifest: DenseManifest, *, encoder: Encoder | None = None,
                 model: str | None = None, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                 backend: str = "faiss", search_device: str = "auto", mmap: bool = False,
                 encoder_backend: Backend = "torch") -> None:
        super().__init__(path, manifest)
        if not isinstance(manifest, DenseManifest):
            raise IndexFormatError(f"{path} is a {manifest.kind} index, not a dense index")
        if backend not in BACKENDS:
            raise EmbedkitError(f"unknown search backend '{backend}' (use {', '.join(BACKENDS)})")
        self.spec: EncoderSpec = manifest.encoder
        self._encoder = encoder
        self._model_override, self._device, self._batch_size = model, device, batch_size
        self.backend, self._search_device, self._mmap = backend, search_device, mmap
        self._encoder_backend = encoder_backend
        if encoder is not None and encoder.fingerprint != self.spec.fingerprint:
            raise ModelMismatchError(
                f"the given encoder's weights (fingerprint {encoder.fingerprint}) differ from the index's "
                f"model '{self.spec.model}' (fingerprint {self.spec.fingerprint})"
            )

    @property
    def mmap(self) -> bool:
        """Whether FAISS files are memory-mapped (`Index.load(..., mmap=True)`)."""
        return self._mmap

    @property
    def search_device(self) -> str:
        """Where the torch backend keeps its matrices."""
        return self._search_device

    @cached_property
    def segments(self) -> list[SegmentReader]:
        """The folder's segments (one for a folder in the one-segment layout), see `embedkit.index.segments`."""
        return [self.segment_reader(record) for record in segment_records(self.path, self.manifest)]

    def segment_reader(self, record: SegmentRecord) -> SegmentReader:
        """A reader of one segment of this folder, opened with this index's options (nothing read yet)."""
        return SegmentReader(self.path, self.manifest, record, mmap=self._mmap, backend=self.backend,
                             search_device=self._search_device)

    @property
    def segments_opened(self) -> bool:
        """Whether `segments` was built already (`use_segments` must come first)."""
        return "segments" in vars(self)

    def use_segments(self, readers: Sequence[SegmentReader]) -> None:
        """Serve these readers (one per segment of the manifest, in its order) as `segments`: how a reload hands
        over the segments an update did not change (`embedkit.index.reopen`)."""
        if self.segments_opened:
            raise EmbedkitError(f"{self.path}: the segments are open already; give readers before the first search")
        if [reader.record for reader in readers] != list(self.manifest.segments):
            raise EmbedkitError(f"{self.path}: the readers given are not the manifest's segments")
        vars(self)["segments"] = list(readers)

    def opened_segments(self) -> list[tuple[SegmentReader, bool]]:
        """The segments this index has opened, each with whether it is this folder's own reader (True) or the
        one-segment layout's files presented as the segment 0 an update converts them into (False)."""
        if self.manifest.segments:
            return [(reader, True) for reader in vars(self).get("segments", [])]
        faiss_index = vars(self).get("faiss_index")
        if faiss_index is None:
            return []
        masked: np.ndarray = vars(self).get("deleted_rows", np.zeros(0, dtype=np.int64))
        manifest = self.manifest
        record = SegmentRecord(id=0, faiss=FAISS_NAME, docstore=DOCSTORE_NAME,
                               vectors=manifest.vectors.file if manifest.vectors else None,
                               deleted=DELETED_NAME if len(masked) else None, row_start=0,
                               row_stop=max(manifest.next_row, manifest.num_docs + len(masked)),
                               num_vectors=int(faiss_index.ntotal), num_stored=manifest.num_docs,
                               num_deleted=len(masked), num_docs=min(manifest.num_docs, int(faiss_index.ntotal)))
        reader = self.segment_reader(record)
        # The torch matrix holds the live rows: as segment 0 (whose deletion file lists the masked rows and any
        # the update removed) its mask hides the rest.
        reader.adopt(SegmentParts(faiss_index=faiss_index, docstore=vars(self).get("docstore"),
                                  deleted=np.sort(masked) if len(masked) else None,
                                  torch_search=vars(self).get("torch_searcher")))
        return [(reader, False)]

    @cached_property
    def faiss_index(self):
        """The FAISS index of the folder: a one-segment folder's own; for several segments, one in-memory index
        holding every live row under its row id (`merged_faiss_index`, the size of all segments together:
        searching goes through `segments` instead, so only callers that need one index pay for it)."""
        if self.manifest.segments:
            if len(self.segments) != 1:
                return self.merged_faiss_index()
            return self.segments[0].faiss_index
        index = read_faiss_file(self.path / FAISS_NAME, mmap=self._mmap, on_disk=self.manifest.on_disk)
        check_faiss_shape(self.path, self.manifest, index, len(self.deleted_rows))
        if self.backend == "faiss-gpu":
            index = to_gpus(index)
        return index

    @cached_property
    def docstore(self) -> DocStore:
        if self.manifest.segments:
            return SegmentedDocStore(self.segments)
        return DocStore(self.path / DOCSTORE_NAME)

    def open_files(self) -> None:
        """The document store, the FAISS index and its deleted rows (and, for the torch backend, the vectors)."""
        if self.manifest.segments:
            for segment in self.segments:
                segment.open_files()
                if self.backend == "torch":
                    _ = segment.torch_search, segment.torch_live
        else:
            super().open_files()
            _ = self.faiss_index  # reads deleted_rows too (its row count is checked against them)
            if self.backend == "torch":
                _ = self.torch_searcher

    @cached_property
    def deleted_rows(self) -> np.ndarray:
        """Rows still inside the FAISS index but deleted (kinds that cannot remove, e.g. HNSW); masked in search."""
        if self.manifest.segments:
            return np.concatenate([np.zeros(0, dtype=np.int64), *(segment.deleted for segment in self.segments)])
        path = self.path / DELETED_NAME
        return load_deleted_rows(path, self.manifest.next_row) if path.is_file() else np.zeros(0, dtype=np.int64)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from embedkit.encoding.registry import encoder_from_spec

            self._encoder = encoder_from_spec(self.spec, model_path=self._model_override, device=self._device,
                                              batch_size=self._batch_size, backend=self._encoder_backend)
        return self._encoder

    @cached_property
    def _ids_by_row(self) -> dict[int, str]:
        return self.docstore.ids_by_row()

    def live_rows(self) -> np.ndarray:
        """Rows of the documents in the index, ascending."""
        return np.fromiter(sorted(self._ids_by_row), dtype=np.int64, count=len(self._ids_by_row))

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The document vectors of `rows` (float32): from the folder's stored copy, else from the FAISS index.

        Exact unless the index is lossy and was built without stored vectors (then an approximation).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.manifest.segments:
            return self._segment_vectors(rows)
        stored = self.manifest.vectors
        if stored is not None:
            check_stored_vectors(self.path, self.manifest)
            matrix = np.memmap(self.path / stored.file, dtype=np.dtype(stored.dtype), mode="r").reshape(-1, self.spec.dim)
            return np.asarray(matrix[rows], dtype=np.float32)
        return reconstruct_rows(self.faiss_index, rows)

    def _segment_vectors(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), self.spec.dim), dtype=np.float32)
        starts = np.array([segment.record.row_start for segment in self.segments], dtype=np.int64)
        owner = np.searchsorted(starts, rows, side="right") - 1
        for position, segment in enumerate(self.segments):
            mask = owner == position
            if mask.any():
                out[mask] = segment.vectors(rows[mask])
        return out

    @property
    def vectors_exact(self) -> bool:
        if self.manifest.segments:
            return self.manifest.vectors is not None or all(stores_exact_vectors(segment.faiss_index)
                                                            for segment in self.segments)
        return self.manifest.vectors is not None or stores_exact_vectors(self.faiss_index)

    @cached_property
    def torch_searcher(self):
        """Backend "torch" on a one-segment folder: its live rows (a segmented folder has one per segment)."""
        from embedkit.index.torch_search import TorchExactSearch

        rows = self.live_rows()
        return TorchExactSearch(self.vectors(rows), rows, metric=self.manifest.metric, device=self._search_device)

    def merged_faiss_index(self):
        """One in-memory FAISS index of every live document of every segment, under its row id (no deleted rows),
        for callers that need a single index (an export, an external tool): same search results as the folder.

        IVF kinds copy each segment's list entries into a copy of the trained template (the very codes, lossy
        ones included; memory-mapped segments are only read); other kinds add the segments' vectors (the stored
        copy, else FAISS's own reconstruction) to an empty index of the folder's factory (HNSW builds one new
        graph)."""
        import faiss

        cpu = [faiss.index_gpu_to_cpu(segment.faiss_index) if self.backend == "faiss-gpu" else segment.faiss_index
               for segment in self.segments]
        trained = self.manifest.trained_index
        merged = (read_faiss_file(self.path / trained) if trained is not None
                  else create_index(self.spec.dim, self.manifest.index_factory, self.manifest.metric))
        merged.reset()
        target = ivf_of(merged)
        for segment, index in zip(self.segments, cpu, strict=True):
            if target is not None:
                append_ivf_entries(index, merged, skip=segment.deleted)
            else:
                rows = segment.live_rows()
                add_vectors(merged, segment.vectors(rows), rows)
        if target is not None:
            merged.ntotal = target.ntotal  # a wrapper (OPQ, PCA) counts what its IVF holds
        if self.backend == "faiss-gpu":
            merged = to_gpus(merged)
        return merged

    # Each kind names its own search options (listed in `search_options`) where `Index.search` takes
    # **params, so the narrower signature is deliberate.
    def search(self, queries: str | Sequence[str], k: int = 10, *, nprobe: int | None = None,  # type: ignore[override]
               ef_search: int | None = None, with_text: bool = True) -> list[list[Passage]]:
        check_k(k)
        _check_positive(nprobe=nprobe, ef_search=ef_search)
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        vectors = self.encoder.encode_queries(texts)
        return self.search_vectors(vectors, k, nprobe=nprobe, ef_search=ef_search, with_text=with_text)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, *, nprobe: int | None = None,
                       ef_search: int | None = None, with_text: bool = True) -> list[list[Passage]]:
        check_k(k)
        _check_positive(nprobe=nprobe, ef_search=ef_search)
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.spec.dim:
            raise EmbedkitError(f"query vectors have dim {vectors.shape[1]}, the index has {self.spec.dim}")
        metric = self.manifest.metric
        if self.backend == "torch" and self.manifest.segments:
            scores, rows = search_segments(self.segments, vectors, k, metric=metric, backend="torch")
        elif self.backend == "torch":
            searcher = self.torch_searcher
            scores, rows = search_with_ties(lambda depth: searcher.search(vectors, depth), k,
                                            max(searcher.ntotal, 1), metric)
        else:
            defaults = self.manifest.search
            nprobe = nprobe if nprobe is not None else defaults.nprobe
            ef_search = ef_search if ef_search is not None else defaults.ef_search
            if self.manifest.segments:
                scores, rows = search_segments(self.segments, vectors, k, metric=metric,
                                               nprobe=nprobe, ef_search=ef_search)
            else:
                index, masked = self.faiss_index, self.deleted_rows
                scores, rows = search_with_ties(  # equal scores: the lower row first, as over segments
                    lambda depth: faiss_search(index, vectors, depth, nprobe=nprobe, ef_search=ef_search,
                                               exclude=masked), k, index.ntotal, self.manifest.metric)
        return self._hits(scores, rows, with_text=with_text)

    def _hits(self, scores: np.ndarray, rows: np.ndarray, *, with_text: bool) -> list[list[Passage]]:
        if self.manifest.metric == "l2":
            scores = -scores  # higher is better everywhere downstream
        documents = self.docstore.by_rows(rows.ravel()) if with_text else None
        results: list[list[Passage]] = []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            hits: list[Passage] = []
            for score, row in zip(query_scores, query_rows, strict=True):
                if row < 0:
                    continue  # fewer than k results
                if documents is not None:
                    doc = documents.get(int(row))
                    if doc is None:
                        continue
                    hits.append(Passage(id=doc.id, score=float(score), rank=len(hits) + 1, title=doc.title,
                                        text=doc.text))
                else:
                    doc_id = self._ids_by_row.get(int(row))
                    if doc_id is not None:
                        hits.append(Passage(id=doc_id, score=float(score), rank=len(hits) + 1))
            results.append(hits)
        return results


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EmbedkitError(f"{name} must be a whole number of at least 1, got {value!r}")


def check_faiss_shape(path: Path, manifest: DenseManifest, index, masked: int) -> None:
    """The FAISS index read from `path` measures the manifest's metric on vectors of the encoder's dimension and
    holds one per live or masked row."""
    if index.d != manifest.encoder.dim:
        raise IndexFormatError(
            f"index {path} is damaged: {path / FAISS_NAME} holds {index.d}-dimensional vectors but the manifest's "
            f"encoder.dim is {manifest.encoder.dim} (queries would not fit); rebuild the index")
    from embedkit.index.faiss_ops import faiss_metric

    if index.metric_type != faiss_metric(manifest.metric):
        raise IndexFormatError(
            f"index {path} is damaged: {path / FAISS_NAME} does not measure {manifest.metric!r}, the metric the "
            "manifest records (scores and their order would be wrong); rebuild the index")
    expected = manifest.num_docs + masked
    if index.ntotal != expected:
        raise IndexFormatError(
            f"index {path} is damaged: {path / FAISS_NAME} holds {index.ntotal} vectors, the manifest "
            f"and {DELETED_NAME} account for {expected}; rebuild the index"
        )


def check_stored_vectors(path: Path, manifest: DenseManifest) -> None:
    """The stored-vectors file holds exactly `next_row` rows of the encoder's dimension (a stat, no read)."""
    stored = manifest.vectors
    if stored is None:
        return
    row_bytes = manifest.encoder.dim * np.dtype(stored.dtype).itemsize
    size = (path / stored.file).stat().st_size
    if size != manifest.next_row * row_bytes:
        raise IndexFormatError(f"index {path} is damaged: {path / stored.file} has {size} bytes, expected "
                               f"{manifest.next_row} rows of {row_bytes} bytes")


def verify_dense(path: Path, manifest: DenseManifest) -> VerifyReport:
    """Every byte against the checksums, the counts, FAISS's shape, the stored vectors' size, and the rows:
    every document's row below `next_row` and none of them masked."""
    if manifest.segments:
        from embedkit.index.segments_verify import verify_segmented

        return verify_segmented(path, manifest)
    report = verify_folder(path, manifest, next_row=manifest.next_row)
    index = DenseIndex(path, manifest)
    ntotal = index.faiss_index.ntotal  # reading it checks the FAISS shape against the manifest
    check_stored_vectors(path, manifest)
    masked = index.deleted_rows
    if len(masked):
        live = index.docstore.present_rows(masked)
        if live:
            raise IndexFormatError(f"index {path} is damaged: {DELETED_NAME} masks row {live[0]}, which holds a "
                                   "document of the store (it would never be found); rebuild the index")
    # Counts can agree while the rows do not: a vector whose row has no document is a hit silently dropped.
    expected = np.union1d(index.live_rows(), masked)
    found = np.sort(faiss_row_ids(index.faiss_index))
    if len(found) != len(expected) or not np.array_equal(found, expected):
        stray = np.setdiff1d(found, expected)
        detail = (f"FAISS row {stray[0]} has no document" if len(stray) else
                  f"document row {np.setdiff1d(expected, found)[0]} has no FAISS vector")
        raise IndexFormatError(f"index {path} is damaged: its FAISS ids and its document store disagree ({detail}); "
                               "rebuild the index")
    report.notes.append(f"FAISS {manifest.index_factory}: {ntotal} vectors ({len(masked)} masked)")
    return report
