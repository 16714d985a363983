"""BM25 over the segments of an updated bm25s index, without re-indexing: the numbers of a rebuilt index.

bm25s bakes the collection's statistics into the scores it saves, so after an update its saved matrices are
gone (`Bm25sUpdater`) and search scores from the segments' postings (`embedkit.lexical.bm25s_segments`) instead.
Opening costs what the vocabularies and the deletions cost: each segment's document frequencies are the
lengths of its postings lists, less one for each distinct term of each deleted document; the total length is
the segments' token counts less the deleted documents' lengths. A query then scores each of its tokens'
postings with bm25s's "lucene" formulas in bm25s's dtypes and order (idf in float32 from Python's `math.log`,
the term-frequency part in float64, each document's contribution rounded to float32 and summed in float32,
query token after query token) into one vector over the live documents in row order, and picks the top k with
bm25s's own selection: the same ids, order, ties and scores as an index rebuilt from the live documents.
A segment whose files an open searcher of this process already maps (a server reloading after an update) is
not read again (`embedkit.lexical.bm25s_segments.open_postings`).

    scorer = SegmentedBM25(root, manifest.segments, live_rows, k1=0.9, b=0.4)
    scores, positions = scorer.top_k(["alpha", "beta"], k=10)   # positions index the live rows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import IndexFormatError
from embedkit.lexical.bm25s_segments import SEGMENTS_DIR, TF_DOCS, SegmentPostings, open_postings
from embedkit.lexical.segments import BM25Segment


@dataclass(frozen=True)
class _Live:
    """One segment as the live index sees it."""

    postings: SegmentPostings
    first: int  # the position, among the live documents, of the segment's first live document
    deleted: np.ndarray  # the offsets in the segment of its deleted documents, ascending
    df: np.ndarray  # live documents holding each of its tokens


class SegmentedBM25:
    """Search over bm25s segments with the statistics of their live documents (the rows `live_rows`)."""

    def __init__(self, root: Path, segments: Sequence[BM25Segment], live_rows: np.ndarray, *, k1: float,
                 b: float) -> None:
        self.k1, self.b = k1, b
        rows = np.sort(np.asarray(live_rows, dtype=np.int64))
        self.num_docs = len(rows)
        self.segments: list[_Live] = []
        total, covered = 0, 0
        for segment in sorted(segments, key=lambda s: s.first_row or 0):
            if segment.first_row is None:
                raise IndexFormatError(f"index {root} is damaged: bm25s segment {segment.name} records no first row")
            postings = open_postings(root / SEGMENTS_DIR / segment.name, segment.documents)
            lo, hi = (int(i) for i in np.searchsorted(rows, [segment.first_row, segment.first_row + segment.documents]))
            deleted = np.arange(0)
            if hi - lo < segment.documents:
                dead = np.ones(segment.documents, dtype=bool)
                dead[rows[lo:hi] - segment.first_row] = False
                deleted = np.flatnonzero(dead)
            df = np.diff(postings.indptr)
            if len(deleted):  # what the deleted documents added: one per distinct term, and their lengths
                df = df - np.bincount(postings.terms(deleted), minlength=len(df))
                if len(df) and df.min() < 0:
                    raise IndexFormatError(f"bm25s segment file {postings.folder / TF_DOCS} is damaged: its postings "
                                           "do not hold the tokens of the segment's documents; rebuild the index")
            lengths = postings.offsets[deleted + 1] - postings.offsets[deleted]
            total += int(postings.offsets[-1]) - int(lengths.sum())
            covered += hi - lo
            self.segments.append(_Live(postings, lo, deleted, df))
        if covered != self.num_docs:
            raise IndexFormatError(f"index {root} is damaged: {self.num_docs - covered} documents of its document "
                                   "store are in no bm25s segment; rebuild the index")
        # bm25s: np.array(lengths).mean(), an exact float64 sum divided by the count
        self.avgdl = np.float64(total) / self.num_docs if self.num_docs else np.float64(0)

    def df(self, token: str) -> int:
        """How many live documents hold `token`."""
        return sum(int(live.df[live.postings.vocab[token]]) for live in self.segments if token in live.postings.vocab)

    def _contributions(self, token: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(positions among the live documents, float32 scores) of the documents holding `token`."""
        df = self.df(token)
        if not df:  # a rebuilt index does not know the token
            return []
        # bm25s's _score_idf_lucene in Python floats, stored in its float32 idf array
        idf = np.float32(math.log(1 + (self.num_docs - df + 0.5) / (df + 0.5)))
        found = []
        for live in self.segments:
            term = live.postings.vocab.get(token)
            if term is None:
                continue
            docs, counts = live.postings.postings(term)
            before = np.searchsorted(live.deleted, docs)  # deleted documents before each one
            if len(live.deleted):
                alive = live.deleted[np.minimum(before, len(live.deleted) - 1)] != docs
                docs, counts, before = docs[alive], counts[alive], before[alive]
            lengths = live.postings.offsets[docs + 1] - live.postings.offsets[docs]
            # bm25s's _score_tfc_lucene, same operands and order: float32 counts, float64 everywhere else
            tf = counts.astype(np.float32)
            tfc = tf / (self.k1 * ((1 - self.b) + self.b * lengths / self.avgdl) + tf)
            found.append((live.first + docs - before, (idf * tfc).astype(np.float32)))
        return found

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """The float32 score of every live document (in row order) for one query's tokens."""
        scores = np.zeros(self.num_docs, dtype=np.float32)
        known: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for token in tokens:  # in query order, a repeated token counting again, as bm25s sums them
            if token not in known:
                known[token] = self._contributions(token)
            for positions, values in known[token]:
                scores[positions] += values  # a document appears once per token: no lost updates
        return scores

    def top_k(self, tokens: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the `k` best live documents, best first, selected by bm25s."""
        from bm25s.selection import topk

        return topk(self.scores(tokens), k=k, sorted=True, backend="auto")
