"""BM25 with bm25s: pure Python/NumPy, no JVM. Lucene's BM25 variant, Snowball English stemming.

bm25s keeps the tokenized corpus in memory while it builds; searching memory-maps the saved matrices.

bm25s bakes the collection's statistics (document count, document frequencies, average length) into the
scores it saves, so an updated index cannot reuse them. Updates therefore keep segments of tokens and postings
(`embedkit.lexical.bm25s_segments`): an update tokenizes and indexes only the documents it adds, and opening an
updated index memory-maps the segments' postings and scores them with the live documents' statistics
(`embedkit.lexical.bm25s_scoring`), exactly as a rebuild would (same scores, same ties), without indexing
anything. `compact` saves bm25s's matrices again, so the next open memory-maps those. As with pyserini, a corpus without a single indexable term (only stopwords, empty or one-letter texts) builds
an index on which every search finds nothing, and a query without an indexed term gets no hits.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.docstore import DocStore
from embedkit.lexical.backends import (
    LexicalBackend,
    LexicalBuilder,
    LexicalSearcher,
    LexicalUpdater,
    ScoredIds,
)
from embedkit.lexical.bm25s_scoring import SegmentedBM25
from embedkit.lexical.bm25s_segments import (
    SEGMENTS_DIR,
    live_tokens,
    next_segment_name,
    segment_name,
    segment_size,
    write_tokens,
)
from embedkit.lexical.segments import BM25Segment
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


def _check_settings(settings: BM25Settings) -> None:
    if settings.multifield:
        raise EmbedkitError("separate title and text fields need the pyserini backend (--backend pyserini); "
                            "bm25s indexes title and text as one field")
    if settings.language not in STOPWORDS:
        raise EmbedkitError(f"bm25s backend: language '{settings.language}' is not supported "
                            f"(supported: {', '.join(STOPWORDS)})")


def _indexed(tokens: list[list[str]], settings: BM25Settings):
    """A bm25s retriever indexing `tokens` (one list per document, at least one document)."""
    import numpy as np

    retriever = _bm25s().BM25(k1=settings.k1, b=settings.b, method="lucene")
    if any(tokens):
        retriever.index(tokens, show_progress=False)
    else:
        # No document has a term: bm25s cannot infer a vocabulary from tokens (max() of nothing), so give it
        # one that holds only its empty token. The average length is 0, hence the 0/0 it computes is masked.
        with np.errstate(divide="ignore", invalid="ignore"):
            retriever.index(([[] for _ in tokens], {"": 0}), show_progress=False)
    return retriever


def _save(tokens: list[list[str]], settings: BM25Settings, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _indexed(tokens, settings).save(str(folder), show_progress=False)


class Bm25sBuilder(LexicalBuilder):
    def __init__(self, folder: Path, settings: BM25Settings) -> None:
        _check_settings(settings)
        self.folder, self.settings = folder, settings
        self.tokens: list[list[str]] = []

    def add(self, documents: Sequence[Document]) -> None:
        self.tokens.extend(_tokenize([doc.joined() for doc in documents], self.settings, return_ids=False))

    def finish(self) -> dict:
        _save(self.tokens, self.settings, self.folder)
        # The tokens too, so that updates score old and new documents together without re-tokenizing.
        write_tokens(self.folder.parent / SEGMENTS_DIR / segment_name(0), self.tokens)
        from importlib.metadata import version

        return {"bm25s_version": version("bm25s"),
                "analyzer": "bm25s: lowercase, English stopwords, " +
                            ("Snowball English stemming" if _stemmer(self.settings.language) else "no stemming")}

    def segments(self) -> list[BM25Segment]:
        folder = self.folder.parent / SEGMENTS_DIR / segment_name(0)
        return [BM25Segment(name=segment_name(0), documents=len(self.tokens), first_row=0, size=segment_size(folder))]


def _converted(root: Path, settings: BM25Settings) -> list[BM25Segment]:
    """Segment 0 for a folder built before segments were recorded: its documents (rows 0, 1, …) re-tokenized
    from the document store, once."""
    from embedkit.index.docstore import DOCSTORE_NAME, DocStore

    store = DocStore(root / DOCSTORE_NAME)
    try:
        documents = list(store.iter_documents())
    finally:
        store.close()
    if [row for row, _ in documents] != list(range(len(documents))):
        raise IndexFormatError(f"index {root} is damaged: its document store's rows are not 0 to "
                               f"{len(documents) - 1}, as a BM25 build writes them; rebuild the index")
    tokens = _tokenize([doc.joined() for _, doc in documents], settings, return_ids=False) if documents else []
    folder = root / SEGMENTS_DIR / segment_name(0)
    write_tokens(folder, tokens)
    return [BM25Segment(name=segment_name(0), documents=len(documents), first_row=0, size=segment_size(folder))]


class Bm25sUpdater(LexicalUpdater):
    """Added documents become one new token segment; removed ones are counted in the segment holding them."""

    def __init__(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment]) -> None:
        _check_settings(settings)
        self.root, self.settings = root, settings
        self.segments = list(segments) or _converted(root, settings)
        self.deleted = {segment.name: segment.deleted for segment in self.segments}
        self.name = next_segment_name(self.segments)
        self.first_row: int | None = None
        self.tokens: list[list[str]] = []
        self.new_deleted = 0
        self.changed = False

    def add(self, documents: Sequence[Document], rows: Sequence[int]) -> None:
        if self.first_row is None:
            self.first_row = rows[0] if rows else None
        if rows and list(rows) != list(range(self.first_row + len(self.tokens), rows[-1] + 1)):  # type: ignore[operator]
            raise EmbedkitError(f"bm25s segments take consecutive rows; got rows {rows[0]}..{rows[-1]}")
        self.tokens.extend(_tokenize([doc.joined() for doc in documents], self.settings, return_ids=False))
        self.changed = True

    def remove(self, ids: Sequence[str], rows: Sequence[int]) -> None:
        for row in rows:
            holder = next((s for s in self.segments if s.holds(row)), None)
            if holder is not None:
                self.deleted[holder.name] += 1
            elif self.first_row is not None and self.first_row <= row < self.first_row + len(self.tokens):
                self.new_deleted += 1  # added earlier in this update and replaced again
            else:
                raise IndexFormatError(f"index {self.root} is damaged: document row {row} is in no bm25s segment; "
                                       "rebuild the index")
            self.changed = True

    def finish(self) -> list[BM25Segment]:
        segments = [segment.model_copy(update={"deleted": self.deleted[segment.name]}) for segment in self.segments]
        if self.tokens:
            folder = self.root / SEGMENTS_DIR / self.name
            write_tokens(folder, self.tokens)
            segments.append(BM25Segment(name=self.name, documents=len(self.tokens), deleted=self.new_deleted,
                                        first_row=self.first_row, size=segment_size(folder)))
        if self.changed:
            # The saved matrices hold the old statistics: opening the index now scores the segments' postings.
            shutil.rmtree(self.root / Backend.folder, ignore_errors=True)
        return segments


class Bm25sSearcher(LexicalSearcher):
    """A built or compacted index searches bm25s's saved matrices; an updated one its segments' postings."""

    def __init__(self, folder: Path, settings: BM25Settings, by_row: dict[int, str],
                 segments: Sequence[BM25Segment] = ()) -> None:
        import numpy as np

        self.settings = settings
        self.retriever = None
        self.segmented: SegmentedBM25 | None = None
        rows = sorted(by_row)
        self.ids = [by_row[row] for row in rows]  # the live documents in row order: how both number them
        if folder.is_dir():  # a built or compacted index: its documents are the store's rows, in order
            self.retriever = _bm25s().BM25.load(str(folder), mmap=True, show_progress=False)
        elif rows:
            self.segmented = SegmentedBM25(folder.parent, segments, np.asarray(rows, dtype=np.int64),
                                           k1=settings.k1, b=settings.b)

    def search(self, queries: Sequence[str], k: int, *, k1: float | None = None, b: float | None = None) -> ScoredIds:
        if (k1 is not None and k1 != self.settings.k1) or (b is not None and b != self.settings.b):
            raise EmbedkitError(f"a bm25s index bakes k1/b in at build time (k1={self.settings.k1}, "
                                f"b={self.settings.b}); rebuild it to change them, or use the pyserini backend")
        if not queries:
            return []
        if self.retriever is None and self.segmented is None:  # every document was removed
            return [[] for _ in queries]
        tokens = _tokenize(list(queries), self.settings, return_ids=False)
        depth = min(k, len(self.ids))
        if self.retriever is not None:
            rows, scores = self.retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
        else:
            found = [self.segmented.top_k(query, depth) for query in tokens]  # type: ignore[union-attr]
            scores, rows = [score for score, _ in found], [row for _, row in found]
        results: ScoredIds = []
        for query_rows, query_scores in zip(rows, scores, strict=True):
            # bm25s pads with zero-score documents when fewer than k match; those are not hits
            results.append([(self.ids[int(row)], float(score))
                            for row, score in zip(query_rows, query_scores, strict=True) if score > 0])
        return results


def compact(root: Path, settings: BM25Settings, segments: Sequence[BM25Segment], live: DocStore) -> list[BM25Segment]:
    """One segment of the live documents of `live` (the document store's live rows) in row order, numbered 0,
    1, … (the update renumbers the document store alike: `Backend.renumbers_rows`), the matrices saved again."""
    segments = list(segments) or _converted(root, settings)
    rows, tokens = live_tokens(root, segments, live.ids_by_row())
    name = next_segment_name(segments)
    shutil.rmtree(root / SEGMENTS_DIR)
    shutil.rmtree(root / Backend.folder, ignore_errors=True)
    write_tokens(root / SEGMENTS_DIR / name, tokens)
    if tokens:
        _save(tokens, settings, root / Backend.folder)
    return [BM25Segment(name=name, documents=len(tokens), first_row=0, size=segment_size(root / SEGMENTS_DIR / name))]


class Backend(LexicalBackend):
    name = "bm25s"
    folder = "bm25s"
    renumbers_rows = True  # a compacted index's documents are the store's rows 0, 1, … in order

    def builder(self, folder: Path, settings: BM25Settings) -> LexicalBuilder:
        return Bm25sBuilder(folder, settings)

    def open(self, folder: Path, settings: BM25Settings, *, ids: Callable[[], dict[int, str]],
             segments: Sequence[BM25Segment] = ()) -> LexicalSearcher:
        return Bm25sSearcher(folder, settings, ids(), segments)

    def updater(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment]) -> LexicalUpdater:
        return Bm25sUpdater(root, settings, segments)

    def compact(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment],
                live: DocStore) -> list[BM25Segment]:
        return compact(root, settings, segments, live)
