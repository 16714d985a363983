"""BM25 with Lucene through pyserini: JsonCollection indexing and `LuceneSearcher`.

The corpus is exported to pyserini's jsonl (`{"id", "contents"[, "title"]}`) in a scratch folder and
indexed in-process by Anserini's `IndexCollection`, so the JVM starts once per process.

Each document's JSON line is stored in the index (`-storeRaw`), as in pyserini's prebuilt indexes: Search-R1's and
FlashRAG's BM25 retrievers open the `lucene/` folder with `LuceneSearcher` and read
`json.loads(searcher.doc(docid).raw())["contents"]`, title on the first line and text after (Search-R1's
`contents`, what embedkit's /retrieve answers). Lucene tokenizes the newline as the space it replaces, so the
indexed terms and scores are those of `title text`. With `--fields` the title is its own field, and `contents`
holds the text alone.

Updates use Lucene's own segments: removed and replaced documents are marked deleted (`IndexWriter`, by their
`id` term), added ones go into a new segment written by Anserini's `SimpleIndexer -append` with the build's
arguments, and compaction is `IndexWriter.forceMerge(1)`. Lucene
never changes a file it wrote, so an update can work on hard links of the old files (`embedkit.lexical.update`).
Lucene's BM25 statistics (document count, document frequencies, average length) still count deleted documents
until their segment is merged, so scores equal a rebuilt index's exactly while no segment records deletions.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError
from embedkit.index.docstore import DocStore
from embedkit.lexical.backends import (
    LexicalBackend,
    LexicalBuilder,
    LexicalSearcher,
    LexicalUpdater,
    ScoredIds,
)
from embedkit.lexical.java import ensure_jvm
from embedkit.lexical.segments import BM25Segment
from embedkit.lexical.settings import BM25Settings

EXPORT_DIR = "pyserini-export"
LANGUAGES = {"english": "en"}
_import_lock = threading.Lock()


def _lucene_searcher_class():
    """pyserini's `LuceneSearcher`, imported after the JVM is chosen."""
    ensure_jvm()
    with _import_lock:
        # pyserini.search.lucene imports pyserini.encode, whose OpenAI module builds a client at import time
        # and refuses to without a key; BM25 never calls OpenAI, so a placeholder lets the import finish.
        placeholder = "OPENAI_API_KEY" not in os.environ
        if placeholder:
            os.environ["OPENAI_API_KEY"] = "unused-by-embedkit"
        try:
            from pyserini.search.lucene import LuceneSearcher
        finally:
            if placeholder:
                os.environ.pop("OPENAI_API_KEY", None)
    return LuceneSearcher


def _index_collection(args: list[str]) -> None:
    ensure_jvm()
    from pyserini.pyclass import autoclass  # configures the Anserini classpath, then starts the JVM

    autoclass("io.anserini.index.IndexCollection").main(args)


def _java(name: str):
    """A Java class of Lucene or Anserini (the JVM is chosen first)."""
    ensure_jvm()
    from pyserini.pyclass import autoclass

    return autoclass(name)


def _directory(folder: Path):
    return _java("org.apache.lucene.store.FSDirectory").open(_java("java.nio.file.Paths").get(str(folder)))


def lucene_segments(folder: Path) -> list[BM25Segment]:
    """The segments of the latest Lucene commit in `folder`, with their document and deletion counts."""
    directory = _directory(folder)
    try:
        infos = _java("org.apache.lucene.index.SegmentInfos").readLatestCommit(directory)
        found = []
        for position in range(infos.size()):
            info = infos.info(position)
            found.append(BM25Segment(name=str(info.info.name), documents=int(info.info.maxDoc()),
                                     deleted=int(info.getDelCount()), size=int(info.sizeInBytes())))
        return found
    finally:
        directory.close()


def _writer(folder: Path):
    """A Lucene IndexWriter appending to the index in `folder`, merging nothing on its own: when deleted documents
    are merged away is the index's merge policy's decision (`BM25Settings.merge`)."""
    config = _java("org.apache.lucene.index.IndexWriterConfig")()
    config.setOpenMode(_java("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
    config.setMergePolicy(_java("org.apache.lucene.index.NoMergePolicy").INSTANCE)
    return _java("org.apache.lucene.index.IndexWriter")(_directory(folder), config)


def delete_documents(folder: Path, ids: Sequence[str]) -> None:
    """Mark the documents with these ids deleted in a new Lucene commit."""
    term, empty = _java("org.apache.lucene.index.Term"), _java("java.util.ArrayList")()
    writer = _writer(folder)
    try:
        for doc_id in ids:
            # pyjnius cannot choose between deleteDocuments(Term...) and (Query...); replacing a term's documents
            # by none is the same deletion.
            writer.updateDocuments(term("id", doc_id), empty)
        writer.commit()
    finally:
        writer.close()
    (folder / "write.lock").unlink(missing_ok=True)


def force_merge(folder: Path) -> None:
    """Merge every segment into one, dropping deleted documents (Lucene's forceMerge(1))."""
    config = _java("org.apache.lucene.index.IndexWriterConfig")()
    config.setOpenMode(_java("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
    writer = _java("org.apache.lucene.index.IndexWriter")(_directory(folder), config)
    try:
        writer.forceMerge(1)
        writer.commit()
    finally:
        writer.close()
    (folder / "write.lock").unlink(missing_ok=True)


class _Export:
    """Documents written as pyserini's jsonl in a scratch folder beside `folder`, for IndexCollection."""

    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        self.folder, self.settings = folder, settings
        self.export = folder.parent / f"{folder.name}-{EXPORT_DIR}"
        self.export.mkdir(parents=True)
        self._handle: IO[str] = open(self.export / "docs.jsonl", "w", encoding="utf-8")
        self.count = 0

    def add(self, documents: Sequence[Document]) -> None:
        self._handle.writelines(_record(doc, self.settings) + "\n" for doc in documents)
        self.count += len(documents)

    def index(self) -> None:
        """Run IndexCollection on the exported documents, then remove the export."""
        self._handle.close()
        try:
            _index_collection(_collection_args(self.settings, self.folder, self.export))
        finally:
            shutil.rmtree(self.export, ignore_errors=True)
        (self.folder / "write.lock").unlink(missing_ok=True)


def _collection_args(settings: BM25Settings, index: Path, source: Path | str) -> list[str]:
    """Anserini's IndexCollection arguments for these settings: builds and updates analyze documents alike."""
    args = ["-collection", "JsonCollection", "-input", str(source), "-index", str(index),
            "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(settings.threads),
            "-language", LANGUAGES[settings.language], "-storeRaw", "-quiet"]
    return args + (["-fields", "title"] if settings.multifield else [])


def _record(doc: Document, settings: BM25Settings) -> str:
    """A document as the JSON line pyserini indexes."""
    if settings.multifield:
        record = {"id": doc.id, "contents": doc.text, "title": doc.title}
    else:
        # Search-R1's "title\ntext": the same terms as doc.joined(), and what readers of raw() split.
        record = {"id": doc.id, "contents": doc.contents()}
    return json.dumps(record, ensure_ascii=False)


def _check_language(settings: BM25Settings) -> None:
    ensure_jvm()  # fail before the corpus is read, not after
    if settings.language not in LANGUAGES:
        raise EmbedkitError(f"pyserini backend: language '{settings.language}' is not supported here "
                            f"(supported: {', '.join(LANGUAGES)})")


class PyseriniBuilder(LexicalBuilder):
    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        _check_language(settings)
        self.folder, self.settings = folder, settings
        self._export = _Export(folder, settings)

    def add(self, documents: Sequence[Document]) -> None:
        self._export.add(documents)

    def finish(self) -> dict:
        self._export.index()
        if not any(self.folder.glob("segments_*")):
            raise EmbedkitError(f"pyserini wrote no Lucene index to {self.folder}; see the messages above")
        from importlib.metadata import version

        return {"pyserini_version": version("pyserini"), "java_version": ensure_jvm().version,
                "analyzer": "Lucene default (Porter stemming, English stopwords)"}

    def segments(self) -> list[BM25Segment]:
        return lucene_segments(self.folder)


class PyseriniUpdater(LexicalUpdater):
    """Removals become Lucene deletions, added documents one new segment, written by Anserini's SimpleIndexer
    with the build's arguments (so they are analyzed as the build analyzed its documents)."""

    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        _check_language(settings)
        self.folder, self.settings = folder, settings
        self._added: dict[str, str] = {}  # id -> JSON line, in the order the document store gives them rows
        self._removed: list[str] = []

    def add(self, documents: Sequence[Document], rows: Sequence[int]) -> None:
        for doc in documents:
            self._added.pop(doc.id, None)
            self._added[doc.id] = _record(doc, self.settings)

    def remove(self, ids: Sequence[str], rows: Sequence[int]) -> None:
        for doc_id in ids:
            # A document added earlier in this update is dropped before it reaches Lucene; one Lucene holds
            # (an older version, if any, is already listed) is deleted there.
            if self._added.pop(doc_id, None) is None:
                self._removed.append(doc_id)

    def finish(self) -> list[BM25Segment]:
        if self._removed:
            delete_documents(self.folder, self._removed)
        if self._added:
            indexer = _java("io.anserini.index.SimpleIndexer")(
                [*_collection_args(self.settings, self.folder, ""), "-append"])
            try:
                indexer.addRawDocuments(list(self._added.values()))
            finally:
                indexer.close()  # commits
            (self.folder / "write.lock").unlink(missing_ok=True)
        return lucene_segments(self.folder)


class PyseriniSearcher(LexicalSearcher):
    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        self.settings = settings
        self.searcher = _lucene_searcher_class()(str(folder))
        self._bm25 = (settings.k1, settings.b)
        self.searcher.set_bm25(settings.k1, settings.b)
        self._lock = threading.Lock()  # set_bm25 changes shared state

    def search(self, queries: Sequence[str], k: int, *, k1: float | None = None, b: float | None = None) -> ScoredIds:
        wanted = (k1 if k1 is not None else self.settings.k1, b if b is not None else self.settings.b)
        with self._lock:
            if wanted != self._bm25:
                self.searcher.set_bm25(*wanted)  # Lucene applies BM25 at query time, so k1/b may change
                self._bm25 = wanted
            qids = [str(i) for i in range(len(queries))]
            texts = [query if query.strip() else "" for query in queries]
            results = self.searcher.batch_search(texts, qids, k=k, threads=self.settings.threads,
                                                 fields=self.settings.fields or {})
        return [[(hit.docid, float(hit.score)) for hit in results.get(qid, [])] for qid in qids]


class Backend(LexicalBackend):
    name = "pyserini"
    folder = "lucene"

    def builder(self, folder: Path, settings: BM25Settings) -> LexicalBuilder:
        return PyseriniBuilder(folder, settings)

    def open(self, folder: Path, settings: BM25Settings, *, ids: Callable[[], dict[int, str]],
             segments: Sequence[BM25Segment] = ()) -> LexicalSearcher:
        return PyseriniSearcher(folder, settings)

    def updater(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment]) -> LexicalUpdater:
        return PyseriniUpdater(root / self.folder, settings)

    def compact(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment],
                live: DocStore) -> list[BM25Segment]:
        force_merge(root / self.folder)  # Lucene finds documents by their id term: the rows stay as they are
        return lucene_segments(root / self.folder)
