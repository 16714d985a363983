"""BM25 index folders: `manifest.json` (kind "bm25", settings), `docstore.sqlite`, and the backend's files.

An updated folder keeps its document store in parts (`BM25Manifest.docstore_parts`, written by
`embedkit.lexical.update`); opening reads them as one store of the live documents (`open_docstore`).

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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedkit.data.corpus import Document
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.base import Index, check_k
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.docstore_parts import PartReader, SegmentedDocStore, verify_parts
from embedkit.index.kinds import IndexKind, VerifyReport, check_document_ids, verify_folder
from embedkit.index.manifest import MANIFEST_NAME, BM25BackendInfo, BM25Manifest, HistoryEntry, IndexManifest
from embedkit.io import atomic_directory
from embedkit.lexical.backends import LexicalSearcher, get_backend, resolve_backend
from embedkit.lexical.settings import BM25Settings
from embedkit.passage import Passage

log = logging.getLogger(__name__)

CHUNK = 2048
# Options of dense indexes that make no sense for BM25: refused rather than silently ignored.
DENSE_ONLY_OPTIONS = ("encoder", "model", "backend", "search_device", "mmap")


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
    backend = get_backend(settings.backend)
    with atomic_directory(out, overwrite=overwrite, marker=MANIFEST_NAME, what="embedkit index") as folder:
        builder = backend.builder(folder / backend.folder, settings)
        store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        count = 0
        chunk: list[Document] = []
        for document in documents:
            chunk.append(document)
            if len(chunk) >= CHUNK:
                check_document_ids([doc.id for doc in chunk], source=corpus, start=count)
                store.add(range(count, count + len(chunk)), chunk)
                builder.add(chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            check_document_ids([doc.id for doc in chunk], source=corpus, start=count)
            store.add(range(count, count + len(chunk)), chunk)
            builder.add(chunk)
            count += len(chunk)
        store.close()
        if count == 0:
            raise EmbedkitError("cannot build an index with no documents")
        facts = builder.finish()
        manifest = BM25Manifest(
            num_docs=count,
            corpus=corpus,
            embedkit_version=__version__,
            settings=settings,
            backend_info=BM25BackendInfo(**facts),
            segments=builder.segments(),
            history=[HistoryEntry(action="build", documents=count, source=corpus)],
        )
        manifest.record_files(folder)
        manifest.save(folder)
    return out


class BM25OpenOptions(BaseModel):
    """Open options of a BM25 index. The query encoder's runtime (device, batch size) is accepted and unused,
    so one set of options opens any kind; options that only a dense index can honour are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    device: str = "auto"
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    encoder: Any = None
    model: str | None = None
    backend: str | None = None
    search_device: str | None = None
    mmap: bool = False

    @model_validator(mode="after")
    def _no_dense_options(self) -> BM25OpenOptions:
        given = [name for name in DENSE_ONLY_OPTIONS if getattr(self, name) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} appl(y/ies) to dense indexes only; a BM25 index has no model "
                             "and no FAISS search backend")
        return self


class BM25Index(Index):
    """A BM25 index. `search(..., k1=, b=)` overrides the recorded parameters (pyserini backend only)."""

    kind = "bm25"
    search_options = frozenset({"k1", "b"})
    manifest: BM25Manifest

    def __init__(self, path: Path, manifest: BM25Manifest) -> None:
        super().__init__(path, manifest)
        if not isinstance(manifest, BM25Manifest):
            raise IndexFormatError(f"{path} is a {manifest.kind} index, not a BM25 index")
        self.settings = manifest.settings
        self.backend = get_backend(self.settings.backend)

    def open_files(self) -> None:
        """The document store and the backend's files, opened now: `Index.load` opens them all from one state of
        the folder, so a search never pairs one update's document store with another's segments."""
        super().open_files()
        _ = self.searcher

    @cached_property
    def docstore(self) -> DocStore:
        """The live documents: `docstore.sqlite`, or the parts updates left (`embedkit.index.docstore_parts`)."""
        return open_docstore(self.path, self.manifest)

    @cached_property
    def searcher(self) -> LexicalSearcher:
        folder = self.path / self.backend.folder
        try:
            return self.backend.open(folder, self.settings, ids=self.docstore.ids_by_row,
                                     segments=self.manifest.segments)
        except EmbedkitError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, EOFError, OSError, RecursionError) as error:
            # The backend's own files (checksummed by `index verify`, but a shared folder's manifest can be made
            # to match anything) are unreadable: damage to report, not a library traceback.
            reason = (str(error).splitlines() or [""])[0][:200]
            raise IndexFormatError(f"index {self.path} is damaged: the {self.settings.backend} files in {folder} "
                                   f"cannot be read ({type(error).__name__}: {reason}); rebuild the index") from None

    # Each kind names its own search options (listed in `search_options`) where `Index.search` takes
    # **params, so the narrower signature is deliberate.
    def search(self, queries: str | Sequence[str], k: int = 10, *, with_text: bool = True,  # type: ignore[override]
               k1: float | None = None, b: float | None = None) -> list[list[Passage]]:
        check_k(k)
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        scored = self.searcher.search(texts, k, k1=k1, b=b)
        documents: dict[str, Document] = {}
        if with_text:
            ids = {doc_id for hits in scored for doc_id, _ in hits}
            rows = self.docstore.row_of(ids)
            documents = {doc.id: doc for doc in self.docstore.by_rows(rows.values()).values()}
        results: list[list[Passage]] = []
        for hits in scored:
            query_hits: list[Passage] = []
            for doc_id, score in hits:
                doc = documents.get(doc_id)
                query_hits.append(Passage(id=doc_id, score=score, rank=len(query_hits) + 1,
                                          title=doc.title if doc else "", text=doc.text if doc else ""))
            results.append(query_hits)
        return results


def open_docstore(path: Path, manifest: BM25Manifest, *, count: bool = True) -> DocStore:
    """The folder's document store as one `DocStore` of live documents (each part's rows counted unless
    `count=False`: a scan of every part)."""
    if not manifest.docstore_parts:
        return DocStore(path / DOCSTORE_NAME, read_all=count)
    return SegmentedDocStore([PartReader(path, part, count=count) for part in manifest.docstore_parts])


def docstore_status(path: Path, manifest: BM25Manifest) -> dict[str, Any]:
    """The document-store parts with their rows, live documents, deleted fractions and bytes (no reads):
    what `embedkit index info` shows under `status`."""
    sizes = {name: record.size for name, record in manifest.files.items()}
    parts = manifest.docstore_parts
    listed = [{"id": part.id, "file": part.docstore, "rows": [part.row_start, part.row_stop],
               "documents": part.num_docs,
               "deleted_fraction": round(part.num_deleted / part.num_stored, 4) if part.num_stored else 0.0,
               "bytes": sum(sizes.get(name, 0) for name in part.files())} for part in parts]
    if not parts:
        listed = [{"id": 0, "file": DOCSTORE_NAME, "documents": manifest.num_docs, "deleted_fraction": 0.0,
                   "bytes": sizes.get(DOCSTORE_NAME, 0)}]
    return {"docstore_parts": listed, "generation": manifest.generation}


class BM25Kind(IndexKind[BM25Manifest, BM25Settings, BM25OpenOptions]):
    """BM25 over the folder's document store, with the pyserini (Lucene) or bm25s backend; updated by segments
    (`embedkit.lexical.update`)."""

    name = "bm25"
    manifest_model = BM25Manifest
    build_options = BM25Settings
    open_options = BM25OpenOptions

    def build(self, documents: Iterable[Document], out: str | Path, options: BM25Settings, *,
              overwrite: bool = False, corpus: str | None = None, total: int | None = None,
              quiet: bool = False) -> Path:
        return build_bm25_index(documents, out, options, overwrite=overwrite, corpus=corpus)

    def open(self, path: Path, manifest: BM25Manifest, options: BM25OpenOptions) -> BM25Index:
        return BM25Index(path, manifest)

    def add(self, path: Path, documents: Iterable[Document], *, source: str | None = None, quiet: bool = True,
            model: str | None = None, merge: bool = True, **runtime: Any) -> Any:
        """Upsert documents (`embedkit index add`); the encoder runtime options are accepted and unused."""
        from embedkit.lexical.update import add_documents

        if model is not None:
            raise EmbedkitError(f"{path} is a BM25 index, which has no model (--model applies to dense indexes)")
        return add_documents(path, documents, source=source, merge=merge)

    def remove(self, path: Path, ids: Iterable[str], *, source: str | None = None, merge: bool = True) -> Any:
        from embedkit.lexical.update import remove_documents

        return remove_documents(path, ids, source=source, merge=merge)

    def compact(self, path: Path) -> Any:
        """Merge the segments into one without deleted documents (`embedkit index compact`)."""
        from embedkit.lexical.update import compact_index

        return compact_index(path)

    def check(self, path: Path, manifest: IndexManifest) -> None:
        """Sizes of every file; the document counts of a folder in parts are checked as its parts open."""
        if isinstance(manifest, BM25Manifest) and manifest.docstore_parts:
            manifest.check_files(path)
        else:
            super().check(path, manifest)

    def verify(self, path: Path, manifest: BM25Manifest | None = None) -> VerifyReport:
        """Every checksum and count, then the segments: their counts add up to the documents, and each
        backend's files agree with them (Lucene's latest commit; bm25s token files cover the store's rows)."""
        from embedkit.lexical.segments import summarize

        manifest = manifest or BM25Manifest.load(path)
        if manifest.docstore_parts:
            unchecked = manifest.verify_checksums(path)
            store = open_docstore(path, manifest)
            try:
                assert isinstance(store, SegmentedDocStore)
                verify_parts(path, store.segments)
            finally:
                store.close()
            report = VerifyReport(path=path, kind=manifest.kind, num_docs=manifest.num_docs,
                                  files=len(manifest.files), unchecked=unchecked)
            report.notes.append(f"document store: {len(manifest.docstore_parts)} parts")
        else:
            report = verify_folder(path, manifest)
        segments = manifest.segments
        if segments:
            live = sum(segment.documents - segment.deleted for segment in segments)
            # Lucene does not index a document with empty contents; bm25s keeps every document's tokens.
            if live > manifest.num_docs or (live != manifest.num_docs and manifest.settings.backend == "bm25s"):
                raise IndexFormatError(f"index {path} is damaged: its segments hold {live} live documents, the "
                                       f"manifest says {manifest.num_docs}; rebuild the index")
            self._verify_backend(path, manifest)
        report.notes.append(summarize(segments))
        return report

    def _verify_backend(self, path: Path, manifest: BM25Manifest) -> None:
        if manifest.settings.backend == "pyserini":
            from embedkit.lexical.pyserini_backend import lucene_segments

            found = lucene_segments(path / get_backend("pyserini").folder)
            if found != manifest.segments:
                raise IndexFormatError(f"index {path} is damaged: its Lucene commit holds segments {found}, the "
                                       f"manifest records {manifest.segments}; rebuild the index")
        else:
            from embedkit.lexical.bm25s_segments import SEGMENTS_DIR, check_postings, live_tokens

            store = open_docstore(path, manifest)
            try:
                by_row = store.ids_by_row()
            finally:
                store.close()
            live_tokens(path, manifest.segments, by_row)  # raises when a stored document is in no segment
            for segment in manifest.segments:
                check_postings(path / SEGMENTS_DIR / segment.name, segment.documents)


BM25_KIND = BM25Kind()
