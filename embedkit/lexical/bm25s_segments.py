"""The token files of a segmented bm25s index: each segment keeps its documents' tokens, so search can score
the live documents with the statistics of all of them (what a rebuilt index computes) without re-tokenizing.

    bm25s-segments/000000/tokens.npy    int32: token ids, document after document
    bm25s-segments/000000/offsets.npy   int64: where each document's tokens start (documents + 1 entries)
    bm25s-segments/000000/vocab.json    the segment's token strings, by id

A segment's documents have the document-store rows `first_row, first_row + 1, …` (`BM25Segment.first_row`);
a document deleted or replaced later is simply gone from the document store, and the segment records the
count. Files come from folders people share: every array is loaded without pickles and checked.

    write_tokens(folder / "000001", [["alpha", "beta"], ["gamma"]])
    read_tokens(folder / "000001", documents=2)      # [["alpha", "beta"], ["gamma"]]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from embedkit.errors import IndexFormatError
from embedkit.lexical.segments import BM25Segment

SEGMENTS_DIR = "bm25s-segments"
TOKENS, OFFSETS, VOCAB = "tokens.npy", "offsets.npy", "vocab.json"


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
    np.save(folder / TOKENS, np.asarray(ids, dtype=np.int32))
    np.save(folder / OFFSETS, np.asarray(offsets, dtype=np.int64))
    (folder / VOCAB).write_text(json.dumps(list(vocab), ensure_ascii=False), encoding="utf-8")


def segment_size(folder: Path) -> int:
    """Bytes of one segment's token files."""
    return sum((folder / name).stat().st_size for name in (TOKENS, OFFSETS, VOCAB))


def read_tokens(folder: Path, documents: int) -> list[list[str]]:
    """The tokens of the `documents` documents of the segment in `folder`; damage is an IndexFormatError."""
    try:
        ids = np.load(folder / TOKENS, allow_pickle=False)
        offsets = np.load(folder / OFFSETS, allow_pickle=False)
        vocab = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise IndexFormatError(f"bm25s segment {folder} is damaged or missing ({type(error).__name__}: "
                               f"{str(error)[:200]}); rebuild the index") from None
    problem = None
    if ids.dtype != np.int32 or ids.ndim != 1 or offsets.dtype != np.int64 or offsets.shape != (documents + 1,):
        problem = f"arrays of unexpected types or shapes (offsets {offsets.shape}, {documents} documents)"
    elif not isinstance(vocab, list) or not all(isinstance(token, str) for token in vocab):
        problem = "its vocabulary is not a list of strings"
    elif offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
        problem = "its offsets do not divide its tokens"
    elif len(ids) and (ids.min() < 0 or ids.max() >= len(vocab)):
        problem = "token ids outside its vocabulary"
    if problem:
        raise IndexFormatError(f"bm25s segment {folder} is damaged: {problem}; rebuild the index")
    words = np.asarray(vocab, dtype=object)[ids].tolist() if len(ids) else []
    bounds = offsets.tolist()
    return [words[bounds[i]:bounds[i + 1]] for i in range(documents)]


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
