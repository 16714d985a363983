"""BM25 with bm25s: pure Python/NumPy, no JVM. Lucene's BM25 variant, Snowball English stemming.

bm25s keeps the tokenized corpus in memory while it builds; searching memory-maps the saved matrices.
As with pyserini, a corpus without a single indexable term (only stopwords, empty or one-letter texts) builds
an index on which every search finds nothing, and a query without an indexed term gets no hits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError
from embedkit.lexical.backends import LexicalBackend, LexicalBuilder, LexicalSearcher, ScoredIds
from embedkit.lexical.settings import BM25Settings

STOPWORDS = {"english": "en"}


def _bm25s():
    """The bm25s module, its logger following ours (bm25s sets it to DEBUG, printing build steps on every run)."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def _tokenize(texts: list[str], settings: BM25Settings, *, return_ids: bool):
    bm25s = _bm25s()
    return bm25s.tokenize(texts, stopwords=STOPWORDS[settings.language], stemmer=_stemmer(settings.language),
                          return_ids=return_ids, show_progress=False)


def _stemmer(language: str):
    try:
        import Stemmer
    except ModuleNotFoundError:  # bm25s works without stemming, but scores a few points lower
        return None
    return Stemmer.Stemmer(language).stemWords


class Bm25sBuilder(LexicalBuilder):
    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        if settings.multifield:
            raise EmbedkitError("separate title and text fields need the pyserini backend (--backend pyserini); "
                                "bm25s indexes title and text as one field")
        if settings.language not in STOPWORDS:
            raise EmbedkitError(f"bm25s backend: language '{settings.language}' is not supported "
                                f"(supported: {', '.join(STOPWORDS)})")
        self.folder, self.settings = folder, settings
        self.tokens: list[list[str]] = []

    def add(self, documents: Sequence[Document]) -> None:
        self.tokens.extend(_tokenize([doc.joined() for doc in documents], self.settings, return_ids=False))

    def finish(self) -> dict:
        import numpy as np

        bm25s = _bm25s()
        retriever = bm25s.BM25(k1=self.settings.k1, b=self.settings.b, method="lucene")
        if any(self.tokens):
            retriever.index(self.tokens, show_progress=False)
        else:
            # No document has a term: bm25s cannot infer a vocabulary from tokens (max() of nothing), so give it
            # one that holds only its empty token. The average length is 0, hence the 0/0 it computes is masked.
            with np.errstate(divide="ignore", invalid="ignore"):
                retriever.index(([[] for _ in self.tokens], {"": 0}), show_progress=False)
        self.folder.mkdir(parents=True, exist_ok=True)
        retriever.save(str(self.folder), show_progress=False)
        from importlib.metadata import version

        return {"bm25s_version": version("bm25s"),
                "analyzer": "bm25s: lowercase, English stopwords, " +
                            ("Snowball English stemming" if _stemmer(self.settings.language) else "no stemming")}


class Bm25sSearcher(LexicalSearcher):
    def __init__(self, folder: Path, settings: BM25Settings, ids: list[str]) -> None:
        bm25s = _bm25s()
        self.settings = settings
        self.retriever = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        self.ids = ids

    def search(self, queries: Sequence[str], k: int, *, k1: float | None = None, b: float | None = None) -> ScoredIds:
        if (k1 is not None and k1 != self.settings.k1) or (b is not None and b != self.settings.b):
            raise EmbedkitError(f"a bm25s index bakes k1/b in at build time (k1={self.settings.k1}, "
                                f"b={self.settings.b}); rebuild it to change them, or use the pyserini backend")
        if not queries:
            return []
        tokens = _tokenize(list(queries), self.settings, return_ids=False)
        depth = min(k, len(self.ids))
        rows, scores = self.retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
        results: ScoredIds = []
        for query_rows, query_scores in zip(rows, scores, strict=True):
            # bm25s pads with zero-score documents when fewer than k match; those are not hits
            results.append([(self.ids[int(row)], float(score))
                            for row, score in zip(query_rows, query_scores, strict=True) if score > 0])
        return results


class Backend(LexicalBackend):
    name = "bm25s"
    folder = "bm25s"

    def builder(self, folder: Path, settings: BM25Settings) -> LexicalBuilder:
        return Bm25sBuilder(folder, settings)

    def open(self, folder: Path, settings: BM25Settings, *, ids: Callable[[], list[str]]) -> LexicalSearcher:
        return Bm25sSearcher(folder, settings, ids())
