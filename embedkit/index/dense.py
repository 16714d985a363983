"""Dense FAISS indexes: build from a corpus (streaming) or from precomputed vectors, load, search.

    from embedkit.data import iter_documents
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import Index, build_dense_index

    encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
    build_dense_index(iter_documents("corpus.jsonl"), encoder, "indexes/mine", factory="HNSW32")
    hits = Index.load("indexes/mine").search("a query", k=10)[0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.data.corpus import Document
from embedkit.encoding.config import EncoderSpec
from embedkit.encoding.encoder import Encoder
from embedkit.errors import EmbedkitError, IndexFormatError, ModelMismatchError
from embedkit.index.base import Hit, Index, register_index_kind
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.faiss_ops import add_vectors, create_index, set_search_parameters, train_index
from embedkit.index.manifest import HistoryEntry, IndexManifest
from embedkit.io import atomic_directory

FAISS_NAME = "index.faiss"
VECTORS_SCRATCH = "vectors.f32"
DEFAULT_TRAIN_SAMPLE = 100_000


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
) -> Path:
    """Encode `documents` and write an index folder at `out` atomically. Returns `out`."""
    create_index(encoder.dim, factory, metric)  # fail on a bad factory string before spending time encoding
    chunks = encoder.iter_encoded(documents, total=total, quiet=quiet)
    return _write(out, chunks, encoder.spec, factory=factory, metric=metric, train_sample=train_sample,
                  overwrite=overwrite, corpus=corpus)


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
) -> Path:
    """Write an index folder from vectors computed elsewhere (e.g. a multimodal encoder).

    `spec` describes the encoder so queries can be encoded the same way later.
    """
    if len(vectors) != len(documents):
        raise EmbedkitError(f"{len(vectors)} vectors for {len(documents)} documents")
    if len(documents) == 0:
        raise EmbedkitError("cannot build an index with no documents")
    return _write(out, [(list(documents), np.asarray(vectors, dtype=np.float32))], spec, factory=factory,
                  metric=metric, train_sample=train_sample, overwrite=overwrite, corpus=corpus)


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
) -> Path:
    import faiss

    from embedkit import __version__

    out = Path(out)
    if out.exists() and not overwrite:
        raise EmbedkitError(f"{out} already exists (use --overwrite to replace it)")
    with atomic_directory(out, overwrite=overwrite) as folder:
        store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        scratch = folder / VECTORS_SCRATCH
        count = 0
        # Vectors go to disk chunk by chunk, so memory holds one chunk of text and one of vectors.
        with open(scratch, "wb") as handle:
            for docs, vectors in chunks:
                if vectors.shape[1] != spec.dim:
                    raise EmbedkitError(f"encoder produced dim {vectors.shape[1]}, expected {spec.dim}")
                store.add(range(count, count + len(docs)), docs)
                handle.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                count += len(docs)
        store.close()
        matrix = np.memmap(scratch, dtype=np.float32, mode="r", shape=(count, spec.dim))
        index = create_index(spec.dim, factory, metric)
        trained_on = train_index(index, matrix, sample_size=train_sample)
        add_vectors(index, matrix, np.arange(count, dtype=np.int64))
        del matrix
        faiss.write_index(index, str(folder / FAISS_NAME))
        scratch.unlink()
        manifest = IndexManifest(
            kind="dense",
            encoder=spec,
            metric=metric,
            index_factory=factory,
            num_docs=count,
            corpus=corpus,
            embedkit_version=__version__,
            settings={"train_sample": trained_on},
            history=[HistoryEntry(action="build", documents=count, source=corpus)],
        )
        manifest.record_files(folder)
        manifest.save(folder)
    return out


@register_index_kind("dense")
class DenseIndex(Index):
    """A FAISS index with the encoder that must be used to query it."""

    def __init__(self, path: Path, manifest: IndexManifest, *, encoder: Encoder | None = None,
                 model: str | None = None, device: str = "auto", batch_size: int = 64) -> None:
        super().__init__(path, manifest)
        if manifest.encoder is None:
            raise IndexFormatError(f"{path}: dense index manifest has no encoder")
        self.spec: EncoderSpec = manifest.encoder
        self._encoder = encoder
        self._model_override, self._device, self._batch_size = model, device, batch_size
        if encoder is not None and encoder.fingerprint != self.spec.fingerprint:
            raise ModelMismatchError(
                f"the given encoder's weights (fingerprint {encoder.fingerprint}) differ from the index's "
                f"model '{self.spec.model}' (fingerprint {self.spec.fingerprint})"
            )

    @classmethod
    def open(cls, path: Path, manifest: IndexManifest, **options: Any) -> DenseIndex:
        return cls(path, manifest, **options)

    @cached_property
    def faiss_index(self):
        import faiss

        try:
            return faiss.read_index(str(self.path / FAISS_NAME))
        except RuntimeError as error:
            raise IndexFormatError(f"{self.path / FAISS_NAME} cannot be read ({str(error).splitlines()[-1]}); rebuild the index") from None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder.from_spec(self.spec, model_path=self._model_override, device=self._device,
                                              batch_size=self._batch_size)
        return self._encoder

    @cached_property
    def _ids_by_row(self) -> dict[int, str]:
        return self.docstore.ids_by_row()

    def search(self, queries: str | Sequence[str], k: int = 10, *, nprobe: int | None = None,
               ef_search: int | None = None, with_text: bool = True) -> list[list[Hit]]:
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        vectors = self.encoder.encode_queries(texts)
        return self.search_vectors(vectors, k, nprobe=nprobe, ef_search=ef_search, with_text=with_text)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, *, nprobe: int | None = None,
                       ef_search: int | None = None, with_text: bool = True) -> list[list[Hit]]:
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.spec.dim:
            raise EmbedkitError(f"query vectors have dim {vectors.shape[1]}, the index has {self.spec.dim}")
        set_search_parameters(self.faiss_index, nprobe=nprobe, ef_search=ef_search)
        scores, rows = self.faiss_index.search(vectors, min(k, max(self.faiss_index.ntotal, 1)))
        return self._hits(scores, rows, with_text=with_text)

    def _hits(self, scores: np.ndarray, rows: np.ndarray, *, with_text: bool) -> list[list[Hit]]:
        if self.manifest.metric == "l2":
            scores = -scores  # higher is better everywhere downstream
        documents = self.docstore.by_rows(rows.ravel()) if with_text else None
        results: list[list[Hit]] = []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            hits: list[Hit] = []
            for score, row in zip(query_scores, query_rows, strict=True):
                if row < 0:
                    continue  # fewer than k results
                if documents is not None:
                    doc = documents.get(int(row))
                    if doc is None:
                        continue
                    hits.append(Hit(id=doc.id, score=float(score), rank=len(hits) + 1, title=doc.title, text=doc.text))
                else:
                    doc_id = self._ids_by_row.get(int(row))
                    if doc_id is not None:
                        hits.append(Hit(id=doc_id, score=float(score), rank=len(hits) + 1))
            results.append(hits)
        return results
