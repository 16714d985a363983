"""Relevance judgements from BEIR tsv (`query-id corpus-id score`, header row) or TREC (`qid 0 docid rel`)."""

from __future__ import annotations

from pathlib import Path

from embedkit.data._files import iter_delimited, require_file
from embedkit.errors import DataFormatError

Qrels = dict[str, dict[str, int]]
HEADER_WORDS = {"query-id", "corpus-id", "score", "qid", "docid", "query_id", "doc_id", "corpus_id", "relevance"}


def load_qrels(path: str | Path) -> Qrels:
    """Load qrels as {query id: {doc id: relevance}}; the column layout is detected per file.

    >>> load_qrels("scifact/qrels/test.tsv")["1"]
    {'31715818': 1}
    """
    path = require_file(path, "qrels file")
    qrels: Qrels = {}
    layout: int | None = None
    for line, columns in iter_delimited(path, None):
        if line == 1 and {column.lower() for column in columns} & HEADER_WORDS:
            continue  # header row (BEIR: query-id corpus-id score)
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
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(relevance)
        except ValueError:
            raise DataFormatError(f"relevance '{relevance}' is not an integer", path=path, line=line) from None
    if not qrels:
        raise DataFormatError("no judgements in qrels file", path=path)
    return qrels
