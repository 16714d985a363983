"""Queries from BEIR queries.jsonl, a tsv/csv (`id<TAB>text`), or a single query string."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedkit.data._files import base_suffix, check_id, iter_csv_rows, iter_json_lines, iter_tsv_rows
from embedkit.errors import DataFormatError

QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id", "question_id")
QUERY_TEXT_FIELDS = ("text", "query", "question", "question_text", "contents")
# First columns that mark a header row of a tsv/csv queries file, compared without case and punctuation
# ("_id", "qid", "query_id", "query-id", "QueryID", "Query ID").
_HEADER_IDS = {"id", "qid", "queryid", "questionid"}


def load_queries(source: str | Path, *, id_field: str | None = None, text_field: str | None = None) -> dict[str, str]:
    """Load queries as {query id: text}, in file order.

    Ids and texts must be strings (a JSON number, list or object is refused, naming the line and field), ids
    without control characters;
    tsv/csv rows must have exactly two columns, id and text, after an optional header row.

    With BEIR SciFact unpacked in ``scifact/`` (needs data files, so not run here):

    >>> load_queries("scifact/queries.jsonl")["1"]  # doctest: +SKIP
    '0-dimensional biomaterials show inductive properties.'
    """
    path = Path(source)
    if path.is_dir() and (path / "queries.jsonl").exists():
        path = path / "queries.jsonl"
    if not path.is_file():
        raise DataFormatError(f"queries file not found: {path}")
    queries: dict[str, str] = {}
    suffix = base_suffix(path)
    if suffix in (".jsonl", ".json"):
        id_name = text_name = None
        for line, record in iter_json_lines(path):
            if id_name is None:
                id_name = _pick(id_field, QUERY_ID_FIELDS, record, path, line, "id")
                text_name = _pick(text_field, QUERY_TEXT_FIELDS, record, path, line, "text")
            assert text_name is not None
            if id_name not in record or text_name not in record:
                missing = id_name if id_name not in record else text_name
                raise DataFormatError(f"missing field '{missing}'", path=path, line=line, fields_found=record)
            _add(queries, _string(record[id_name], path, line, id_name, "query id"),
                 _string(record[text_name], path, line, text_name, "query text"), path, line, id_name)
    elif suffix in (".tsv", ".txt", ".csv"):
        for line, columns in _rows(path, suffix):
            _add(queries, columns[0], columns[1], path, line, None)
    else:
        raise DataFormatError(f"unknown queries format '{suffix}' (use .jsonl, .tsv or .csv)", path=path)
    if not queries:
        raise DataFormatError("no queries in file", path=path)
    return queries


def _rows(path: Path, suffix: str) -> Iterator[tuple[int, list[str]]]:
    rows = iter_csv_rows(path) if suffix == ".csv" else iter_tsv_rows(path)
    separator = "comma" if suffix == ".csv" else "tab"
    first = True
    for line, columns in rows:
        if len(columns) != 2:
            hint = " (a text holding a tab must be a quoted field)" if separator == "tab" and len(columns) > 2 else ""
            raise DataFormatError(f"expected 2 {separator}-separated columns (id, text), got {len(columns)}{hint}",
                                  path=path, line=line)
        if first and _header_name(columns[0]) in _HEADER_IDS:
            first = False
            continue  # header row
        first = False
        yield line, columns


def _header_name(text: str) -> str:
    return "".join(char for char in text.lower() if char.isalnum())


def _string(value: Any, path: Path, line: int, field: str, what: str) -> str:
    if isinstance(value, str):
        return value
    kind = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(type(value), "null")
    raise DataFormatError(f"{what} must be a string, got {kind}", path=path, line=line, field=field)


def _pick(explicit, candidates, record, path, line, what) -> str:
    if explicit is not None:
        return explicit
    for name in candidates:
        if name in record:
            return name
    raise DataFormatError(
        f"no query {what} field (looked for {', '.join(candidates)})", path=path, line=line, fields_found=record
    )


def _add(queries: dict[str, str], query_id: str, text: str, path: Path, line: int, field: str | None) -> None:
    if query_id == "":
        raise DataFormatError("empty query id", path=path, line=line, field=field)
    check_id(query_id, what="query id", path=path, line=line, field=field)
    if query_id in queries:
        raise DataFormatError(f"duplicate query id '{query_id}'", path=path, line=line)
    queries[query_id] = text
