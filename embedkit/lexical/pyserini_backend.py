"""BM25 with Lucene through pyserini: JsonCollection indexing and `LuceneSearcher`.

The corpus is exported to pyserini's jsonl (`{"id", "contents"[, "title"]}`) in a scratch folder and
indexed in-process by Anserini's `IndexCollection`, so the JVM starts once per process.

Each document's JSON line is stored in the index (`-storeRaw`), as in pyserini's prebuilt indexes: Search-R1's and
FlashRAG's BM25 retrievers open the `lucene/` folder with `LuceneSearcher` and read
`json.loads(searcher.doc(docid).raw())["contents"]`, title on the first line and text after (Search-R1's
`contents`, what embedkit's /retrieve answers). Lucene tokenizes the newline as the space it replaces, so the
indexed terms and scores are those of `title text`. With `--fields` the title is its own field, and `contents`
holds the text alone.
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
from embedkit.lexical.backends import LexicalBackend, LexicalBuilder, LexicalSearcher, ScoredIds
from embedkit.lexical.java import ensure_jvm
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


class PyseriniBuilder(LexicalBuilder):
    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        ensure_jvm()  # fail before the corpus is read, not after
        if settings.language not in LANGUAGES:
            raise EmbedkitError(f"pyserini backend: language '{settings.language}' is not supported here "
                                f"(supported: {', '.join(LANGUAGES)})")
        self.folder, self.settings = folder, settings
        self.export = folder.parent / f"{folder.name}-{EXPORT_DIR}"
        self.export.mkdir(parents=True)
        self._handle: IO[str] = open(self.export / "docs.jsonl", "w", encoding="utf-8")
        self.count = 0

    def add(self, documents: Sequence[Document]) -> None:
        for doc in documents:
            if self.settings.multifield:
                record = {"id": doc.id, "contents": doc.text, "title": doc.title}
            else:
                # Search-R1's "title\ntext": the same terms as doc.joined(), and what readers of raw() split.
                record = {"id": doc.id, "contents": doc.contents()}
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += len(documents)

    def finish(self) -> dict:
        self._handle.close()
        try:
            args = ["-collection", "JsonCollection", "-input", str(self.export), "-index", str(self.folder),
                    "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(self.settings.threads),
                    "-language", LANGUAGES[self.settings.language], "-storeRaw", "-quiet"]
            if self.settings.multifield:
                args += ["-fields", "title"]
            _index_collection(args)
        finally:
            shutil.rmtree(self.export, ignore_errors=True)
        (self.folder / "write.lock").unlink(missing_ok=True)
        if not any(self.folder.glob("segments_*")):
            raise EmbedkitError(f"pyserini wrote no Lucene index to {self.folder}; see the messages above")
        from importlib.metadata import version

        return {"pyserini_version": version("pyserini"), "java_version": ensure_jvm().version,
                "analyzer": "Lucene default (Porter stemming, English stopwords)"}


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

    def open(self, folder: Path, settings: BM25Settings, *, ids: Callable[[], list[str]]) -> LexicalSearcher:
        return PyseriniSearcher(folder, settings)
