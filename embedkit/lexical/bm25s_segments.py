"""The files of a segmented bm25s index: each segment keeps its documents' tokens and their postings, so search
scores the live documents with the statistics of all of them (what a rebuilt index computes) without
re-tokenizing and without re-indexing (`embedkit.lexical.bm25s_scoring`).

    bm25s-segments/000000/tokens.npy     int32: token ids, document after document
    bm25s-segments/000000/offsets.npy    int64: where each document's tokens start (documents + 1 entries);
                                         their differences are the documents' lengths
    bm25s-segments/000000/vocab.json     the segment's token strings, by id
    bm25s-segments/000000/tf_indptr.npy  int64: where each token's postings start (tokens + 1 entries)
    bm25s-segments/000000/tf_docs.npy    int32: the documents (offsets in the segment, ascending) of each posting
    bm25s-segments/000000/tf_counts.npy  int32: how often the token occurs in that document

The postings (a term-frequency matrix in CSC layout) are what a search reads; the tokens are the documents'
own term lists, which is what removing a document from the statistics (its distinct terms, its length) and
`compact` (re-indexing the live documents with bm25s) read. A segment written before postings existed has only
the token files; opening it derives its postings in memory (`read_postings`).

A segment's documents have the document-store rows `first_row, first_row + 1, …` (`BM25Segment.first_row`);
a document deleted or replaced later is simply gone from the document store, and the segment records the
count. Files come from folders people share: every array is loaded without pickles and checked.

    write_tokens(folder / "000001", [["alpha", "beta"], ["gamma"]])   # the token files and the postings
    read_tokens(folder / "000001", documents=2)      # [["alpha", "beta"], ["gamma"]]
    read_postings(folder / "000001", documents=2).postings(1)   # (array([0]), array([1])): "beta" once in document 0
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import IndexFormatError
from embedkit.lexical.segments import BM25Segment

SEGMENTS_DIR = "bm25s-segments"
TOKENS, OFFSETS, VOCAB = "tokens.npy", "offsets.npy", "vocab.json"
TF_INDPTR, TF_DOCS, TF_COUNTS = "tf_indptr.npy", "tf_docs.npy", "tf_counts.npy"
POSTINGS_FILES = (TF_INDPTR, TF_DOCS, TF_COUNTS)


def segment_name(number: int) -> str:
    return f"{number:06d}"


def next_segment_name(segments: Sequence[BM25Segment]) -> str:
    """A name no listed segment has (one more than the highest)."""
    return segment_name(max((int(s.name) for s in segments if s.name.isdigit()), default=-1) + 1)


def next_row(segments: Sequence[BM25Segment]) -> int:
    """The first row after every segment's rows (rows of deleted documents are never given again)."""
    return max((s.first_row + s.documents for s in segments if s.first_row is not None), default=0)


def write_tokens(folder: Path, tokens: Sequence[Sequence[str]]) -> None:
    """Write one segment's tokens (a list of tokens per document) into the new folder `folder`."""
    vocab: dict[str, int] = {}
    ids: list[int] = []
    offsets = [0]
    for document in tokens:
        ids += [vocab.setdefault(token, len(vocab)) for token in document]
        offsets.append(len(ids))
    folder.mkdir(parents=True)
    token_ids, bounds = np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64)
    np.save(folder / TOKENS, token_ids)
    np.save(folder / OFFSETS, bounds)
    (folder / VOCAB).write_text(json.dumps(list(vocab), ensure_ascii=False), encoding="utf-8")
    for name, array in zip(POSTINGS_FILES, _postings(token_ids, bounds, len(vocab)), strict=True):
        np.save(folder / name, array)


def _postings(ids: np.ndarray, offsets: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSC term-frequency matrix of a segment's tokens: (indptr, documents, counts), each token's documents
    ascending."""
    import scipy.sparse

    documents = len(offsets) - 1
    owner = np.repeat(np.arange(documents, dtype=np.int32), np.diff(offsets))
    # scipy sums the repeated (document, token) pairs into counts, in linear time (a sort takes 8x longer)
    matrix = scipy.sparse.csc_matrix((np.ones(len(ids), dtype=np.int32), (owner, ids)), shape=(documents, terms))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return (matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32, copy=False),
            matrix.data.astype(np.int32, copy=False))


def segment_size(folder: Path) -> int:
    """Bytes of one segment's files."""
    return sum((folder / name).stat().st_size for name in (TOKENS, OFFSETS, VOCAB, *POSTINGS_FILES)
               if (folder / name).exists())


def _damaged(path: Path, problem: str) -> IndexFormatError:
    return IndexFormatError(f"bm25s segment file {path} is damaged: {problem}; rebuild the index")


def _array(folder: Path, name: str, dtype: type, *, mmap: bool = False) -> np.ndarray:
    """One of a segment's arrays: no pickles, one dimension, the expected dtype (memory-mapped with `mmap`)."""
    try:
        array = np.load(folder / name, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as error:
        raise IndexFormatError(f"bm25s segment file {folder / name} is damaged or missing ({type(error).__name__}: "
                               f"{str(error)[:200]}); rebuild the index") from None
    if array.dtype != dtype or array.ndim != 1:
        raise _damaged(folder / name, f"a {array.ndim}-dimensional {array.dtype} array, not a list of {np.dtype(dtype)}")
    return array


def _tokens(folder: Path, documents: int, *, mmap: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A segment's token ids, offsets and vocabulary, their shapes and offsets checked (not every id: that
    reads every token; `_check_ids` does, for the ids a caller reads)."""
    ids = _array(folder, TOKENS, np.int32, mmap=mmap)
    offsets = _array(folder, OFFSETS, np.int64, mmap=mmap)
    try:
        vocab = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise IndexFormatError(f"bm25s segment file {folder / VOCAB} is damaged or missing "
                               f"({type(error).__name__}: {str(error)[:200]}); rebuild the index") from None
    if not isinstance(vocab, list) or not all(isinstance(token, str) for token in vocab):
        raise _damaged(folder / VOCAB, "not a list of strings")
    if offsets.shape != (documents + 1,):
        raise _damaged(folder / OFFSETS, f"{len(offsets)} entries for {documents} documents")
    if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
        raise _damaged(folder / OFFSETS, "its offsets do not divide the segment's tokens")
    return ids, offsets, vocab


def _check_ids(folder: Path, ids: np.ndarray, terms: int) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= terms):
        raise _damaged(folder / TOKENS, "token ids outside its vocabulary")


def read_tokens(folder: Path, documents: int) -> list[list[str]]:
    """The tokens of the `documents` documents of the segment in `folder`; damage is an IndexFormatError."""
    ids, offsets, vocab = _tokens(folder, documents, mmap=False)
    _check_ids(folder, ids, len(vocab))
    words = np.asarray(vocab, dtype=object)[ids].tolist() if len(ids) else []
    bounds = offsets.tolist()
    return [words[bounds[i]:bounds[i + 1]] for i in range(documents)]


@dataclass(frozen=True)
class SegmentPostings:
    """One segment's postings and tokens, memory-mapped; every slice a search reads is checked as it is read.

        segment = read_postings(folder, documents=2)
        documents, counts = segment.postings(segment.vocab["beta"])
        segment.terms(np.array([1]))   # the distinct token ids of document 1
    """

    folder: Path
    vocab: dict[str, int]
    indptr: np.ndarray
    docs: np.ndarray
    counts: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """The documents (ascending offsets in the segment) holding token id `term`, and its count in each."""
        start, end = int(self.indptr[term]), int(self.indptr[term + 1])
        docs, counts = np.asarray(self.docs[start:end]), np.asarray(self.counts[start:end])
        if len(docs) and (docs[0] < 0 or docs[-1] >= self.documents or np.any(np.diff(docs) <= 0)):
            raise _damaged(self.folder / TF_DOCS, f"the postings of token {term} are not ascending documents "
                           f"of the segment's {self.documents}")
        if len(counts) and counts.min() < 1:
            raise _damaged(self.folder / TF_COUNTS, f"token {term} has counts below 1")
        return docs, counts

    def terms(self, documents: np.ndarray) -> np.ndarray:
        """The distinct token ids of each of `documents` (ascending offsets in the segment), one after the other:
        one entry per (document, token) pair, what each document adds to the document frequencies."""
        starts, ends = self.offsets[documents], self.offsets[documents + 1]
        lengths = ends - starts
        # the positions of every token of the documents, gathered at once (a loop costs per document)
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        ids = np.asarray(self.tokens[np.arange(int(lengths.sum()), dtype=np.int64) + shift])
        _check_ids(self.folder, ids, len(self.vocab))
        owner = np.repeat(np.arange(len(documents), dtype=np.int64), lengths)
        return np.unique(owner * max(len(self.vocab), 1) + ids) % max(len(self.vocab), 1)


def read_postings(folder: Path, documents: int) -> SegmentPostings:
    """The postings of the `documents` documents of the segment in `folder`, memory-mapped; their shapes and
    bounds are checked (files come from folders people share), damage is an IndexFormatError naming the file.
    A segment written before postings existed has them derived from its tokens, in memory."""
    tokens, offsets, vocab = _tokens(folder, documents, mmap=True)
    by_token = {token: number for number, token in enumerate(vocab)}
    if len(by_token) != len(vocab):
        raise _damaged(folder / VOCAB, "a token listed twice")
    if (folder / TF_INDPTR).exists():
        indptr = _array(folder, TF_INDPTR, np.int64)
        docs = _array(folder, TF_DOCS, np.int32, mmap=True)
        counts = _array(folder, TF_COUNTS, np.int32, mmap=True)
        if indptr.shape != (len(vocab) + 1,):
            raise _damaged(folder / TF_INDPTR, f"{len(indptr)} entries for {len(vocab)} tokens")
        if indptr[0] != 0 or indptr[-1] != len(docs) or np.any(np.diff(indptr) < 0):
            raise _damaged(folder / TF_INDPTR, f"its offsets do not divide the {len(docs)} postings of {TF_DOCS}")
        if len(counts) != len(docs) or len(docs) > len(tokens):
            raise _damaged(folder / TF_COUNTS, f"{len(counts)} counts for {len(docs)} postings of "
                           f"{len(tokens)} tokens")
    else:
        _check_ids(folder, np.asarray(tokens), len(vocab))
        indptr, docs, counts = _postings(np.asarray(tokens), np.asarray(offsets), len(vocab))
    return SegmentPostings(folder, by_token, indptr, docs, counts, tokens, offsets)


def check_postings(folder: Path, documents: int) -> None:
    """For `embedkit index verify`: every byte of the segment's postings is what its tokens give (opening checks
    only shapes and the slices it reads). A segment written before postings has none to check."""
    ids, offsets, vocab = _tokens(folder, documents, mmap=True)
    _check_ids(folder, np.asarray(ids), len(vocab))
    if not (folder / TF_INDPTR).exists():
        return
    stored = read_postings(folder, documents)
    derived = _postings(np.asarray(ids), np.asarray(offsets), len(vocab))
    for name, mine, expected in zip(POSTINGS_FILES, (stored.indptr, stored.docs, stored.counts), derived,
                                    strict=True):
        if not np.array_equal(mine, expected):
            raise _damaged(folder / name, "its postings are not those of the segment's tokens")


_OPENED: weakref.WeakValueDictionary[tuple, SegmentPostings] = weakref.WeakValueDictionary()
_OPENED_LOCK = threading.Lock()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def open_postings(folder: Path, documents: int) -> SegmentPostings:
    """`read_postings(folder, documents)`, or the very postings a searcher of this process still holds for the
    same files: a server reloading an updated folder keeps its unchanged segments mapped.

    Why this is safe: an update hard-links the files of unchanged segments into the new folder and writes new
    segments under new names, and no segment file is ever rewritten in place; so the same path, device, inode,
    size and modification time of every file mean the same bytes (the held mappings pin the inodes)."""
    key = (str(folder.resolve()), documents,
           *(_identity(folder / name) for name in (TOKENS, OFFSETS, VOCAB, *POSTINGS_FILES)))
    with _OPENED_LOCK:
        held = _OPENED.get(key)
    if held is not None:
        return held
    postings = read_postings(folder, documents)
    with _OPENED_LOCK:
        return _OPENED.setdefault(key, postings)


def live_tokens(root: Path, segments: Sequence[BM25Segment], live: Iterable[int]) -> tuple[list[int], list[list[str]]]:
    """The rows and tokens of the documents of `segments` (under `root/bm25s-segments`) whose rows are in
    `live`, in row order: the order a rebuilt index would index them in."""
    wanted = set(live)
    rows: list[int] = []
    tokens: list[list[str]] = []
    for segment in sorted(segments, key=lambda s: s.first_row or 0):
        if segment.first_row is None:
            raise IndexFormatError(f"index {root} is damaged: bm25s segment {segment.name} records no first row")
        for offset, document in enumerate(read_tokens(root / SEGMENTS_DIR / segment.name, segment.documents)):
            row = segment.first_row + offset
            if row in wanted:
                rows.append(row)
                tokens.append(document)
    missing = len(wanted) - len(rows)
    if missing:
        raise IndexFormatError(f"index {root} is damaged: {missing} documents of its document store are in no "
                               "bm25s segment; rebuild the index")
    return rows, tokens
