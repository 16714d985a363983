"""Relevance judgements from BEIR tsv (`query-id corpus-id score`, header row) or TREC (`qid 0 docid rel`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from embedkit.data._files import check_id, iter_lines, iter_tsv_rows, require_file
from embedkit.errors import DataFormatError

Qrels = dict[str, dict[str, int]]
HEADER_WORDS = {"query-id", "corpus-id", "score", "qid", "docid", "query_id", "doc_id", "corpus_id", "relevance"}
# ASCII digits only: int() also reads "1_0" as 10 and "١" as 1, which trec_eval would not.
_GRADE = re.compile(r"[+-]?[0-9]+")
MAX_GRADE = 2**31 - 1  # trec_eval (and pytrec_eval, which fails with a SystemError beyond a C long) keeps grades in a long


def load_qrels(path: str | Path) -> Qrels:
    """Load qrels as {query id: {doc id: relevance}}; the column layout is detected per file.

    A file whose first line holds a tab is read as tab-separated (BEIR; ids may contain spaces, quoted
    fields as in our TSV reader); otherwise columns are separated by runs of whitespace (TREC).
    Grades are integers (negative ones too: trec_eval counts them as not relevant). Ids holding a control
    character and a document judged twice with different grades for one query are refused.

    With BEIR SciFact unpacked in ``scifact/`` (needs data files, so not run here):

    >>> load_qrels("scifact/qrels/test.tsv")["1"]  # doctest: +SKIP
    {'31715818': 1}
    """
    path = require_file(path, "qrels file")
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
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
        check_id(query_id, what="query id", path=path, line=line)
        check_id(doc_id, what="document id", path=path, line=line)
        if not _GRADE.fullmatch(relevance.strip()):
            raise DataFormatError(f"relevance '{relevance}' is not an integer", path=path, line=line)
        grade = int(relevance)
        if abs(grade) > MAX_GRADE:
            raise DataFormatError(f"relevance {relevance.strip()} is out of range (grades are small integers, at "
                                  f"most {MAX_GRADE} in magnitude)", path=path, line=line)
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataFormatError(
                f"document '{doc_id}' is judged {judged[doc_id]} on line {first_line[query_id, doc_id]} and {grade} "
                f"here for query '{query_id}'; keep one judgement", path=path, line=line)
        judged[doc_id] = grade
        first_line.setdefault((query_id, doc_id), line)
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
