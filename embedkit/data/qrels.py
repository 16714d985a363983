"""Relevance judgements from BEIR tsv (`query-id corpus-id score`, header row) or TREC (`qid 0 docid rel`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from embedkit.data._files import iter_lines, iter_tsv_rows, require_file
from embedkit.errors import DataFormatError

Qrels = dict[str, dict[str, int]]
HEADER_WORDS = {"query-id", "corpus-id", "score", "qid", "docid", "query_id", "doc_id", "corpus_id", "relevance"}


def load_qrels(path: str | Path) -> Qrels:
    """Load qrels as {query id: {doc id: relevance}}; the column layout is detected per file.

    A file whose first line holds a tab is read as tab-separated (BEIR; ids may contain spaces, quoted
    fields as in our TSV reader); otherwise columns are separated by runs of whitespace (TREC).

    With BEIR SciFact unpacked in ``scifact/`` (needs data files, so not run here):

    >>> load_qrels("scifact/qrels/test.tsv")["1"]  # doctest: +SKIP
    {'31715818': 1}
    """
    path = require_file(path, "qrels file")
    qrels: Qrels = {}
    layout: int | None = None
    first = True
    for line, columns in _rows(path):
        if first and {column.strip().lower() for column in columns} & HEADER_WORDS:
            first = False
            continue  # header row (BEIR: query-id corpus-id score)
        first = False
        if layout is None:
            layout = len(columns)
            if layout not in (3, 4):
                raise DataFormatError(
                    f"expected 3 columns (BEIR: query-id corpus-id score) or 4 (TREC: qid iter docid rel), got {layout}",
                    path=path,
                    line=line,
                )
        if len(columns) != layout:
            raise DataFormatError(f"expected {layout} columns like the lines before, got {len(columns)}", path=path, line=line)
        query_id, doc_id, relevance = (columns[0], columns[1], columns[2]) if layout == 3 else (columns[0], columns[2], columns[3])
        if not query_id or not doc_id:
            raise DataFormatError(f"empty {'query' if not query_id else 'document'} id", path=path, line=line)
        try:
            grade = int(relevance)
        except ValueError:
            raise DataFormatError(f"relevance '{relevance}' is not an integer", path=path, line=line) from None
        qrels.setdefault(query_id, {})[doc_id] = grade
    if not qrels:
        raise DataFormatError("no judgements in qrels file", path=path)
    return qrels


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    tabbed: bool | None = None
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        if tabbed is None:
            tabbed = "\t" in text
        if tabbed:
            break
        yield line, text.split()
    if tabbed:
        yield from iter_tsv_rows(path)
