"""BM25 index folders: `manifest.json` (kind "bm25", settings), `docstore.sqlite`, and the backend's files.

    build_bm25_index(iter_documents("corpus.jsonl"), "indexes/bm25", BM25Settings(backend="bm25s"))
    index = Index.load("indexes/bm25")          # a BM25Index
    index.search(["a query"], k=10)             # [[Hit(id, score, rank, title, text), …]]
    index.search_run(queries, k=1000)           # {qid: {docid: score}} for embedkit.eval.evaluate
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.base import Hit, Index, register_index_kind
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.manifest import MANIFEST_NAME, HistoryEntry, IndexManifest
from embedkit.io import atomic_directory
from embedkit.lexical.backends import LexicalSearcher, get_backend, resolve_backend
from embedkit.lexical.settings import BM25Settings

log = logging.getLogger(__name__)

CHUNK = 2048


def build_bm25_index(
    documents: Iterable[Document],
    out: str | Path,
    settings: BM25Settings | None = None,
    *,
    overwrite: bool = False,
    corpus: str | None = None,
) -> Path:
    """Write a BM25 index folder at `out` atomically (never half an index). Returns `out`.

    `settings.backend` may be "auto" only through `resolve_backend`; pass a concrete backend here.
    """
    from embedkit import __version__

    settings = settings or BM25Settings(backend=resolve_backend("auto"))
    out = Path(out)
    if out.exists() and not overwrite:
        raise EmbedkitError(f"{out} already exists (use --overwrite to replace it)")
    backend = get_backend(settings.backend)
    with atomic_directory(out, overwrite=overwrite) as folder:
        builder = backend.builder(folder / backend.folder, settings)
        store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        count = 0
        chunk: list[Document] = []
        for document in documents:
            chunk.append(document)
            if len(chunk) >= CHUNK:
                store.add(range(count, count + len(chunk)), chunk)
                builder.add(chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            store.add(range(count, count + len(chunk)), chunk)
            builder.add(chunk)
            count += len(chunk)
        store.close()
        if count == 0:
            raise EmbedkitError("cannot build an index with no documents")
        facts = builder.finish()
        manifest = IndexManifest(
            kind="bm25",
            num_docs=count,
            corpus=corpus,
            embedkit_version=__version__,
            settings={**settings.model_dump(), **facts},
            history=[HistoryEntry(action="build", documents=count, source=corpus)],
        )
        manifest.files = _file_sizes(folder)
        manifest.save(folder)
    return out


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file of the index (backend subfolders included), so damage to any of them is detected."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST_NAME, "write.lock")
    }


@register_index_kind("bm25")
class BM25Index(Index):
    """A BM25 index. `search(..., k1=, b=)` overrides the recorded parameters (pyserini backend only)."""

    def __init__(self, path: Path, manifest: IndexManifest) -> None:
        super().__init__(path, manifest)
        known = set(BM25Settings.model_fields)
        try:
            self.settings = BM25Settings(**{k: v for k, v in manifest.settings.items() if k in known})
        except ValueError as error:
            raise IndexFormatError(f"{path}: bad BM25 settings in the manifest: {error}") from None
        self.backend = get_backend(self.settings.backend)

    @classmethod
    def open(cls, path: Path, manifest: IndexManifest, *, model: str | None = None, **_encoder_options: Any) -> BM25Index:
        # Options meant for dense encoders (device, batch size) do not apply to BM25 and are ignored.
        if model is not None:
            raise EmbedkitError(f"{path} is a BM25 index: it has no model, so --model does not apply")
        return cls(path, manifest)

    @cached_property
    def searcher(self) -> LexicalSearcher:
        return self.backend.open(self.path / self.backend.folder, self.settings, ids=self._ids_in_row_order)

    def _ids_in_row_order(self) -> list[str]:
        by_row = self.docstore.ids_by_row()
        return [by_row[row] for row in sorted(by_row)]

    def search(self, queries: str | Sequence[str], k: int = 10, *, with_text: bool = True,
               k1: float | None = None, b: float | None = None) -> list[list[Hit]]:
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        if k < 1:
            raise EmbedkitError(f"k must be at least 1, got {k}")
        scored = self.searcher.search(texts, k, k1=k1, b=b)
        documents: dict[str, Document] = {}
        if with_text:
            ids = {doc_id for hits in scored for doc_id, _ in hits}
            rows = self.docstore.row_of(ids)
            documents = {doc.id: doc for doc in self.docstore.by_rows(rows.values()).values()}
        results: list[list[Hit]] = []
        for hits in scored:
            query_hits: list[Hit] = []
            for doc_id, score in hits:
                doc = documents.get(doc_id)
                query_hits.append(Hit(id=doc_id, score=score, rank=len(query_hits) + 1,
                                      title=doc.title if doc else "", text=doc.text if doc else ""))
            results.append(query_hits)
        return results
