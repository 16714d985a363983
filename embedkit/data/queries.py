"""Queries from BEIR queries.jsonl, a tsv (`id<TAB>text`), or a single query string."""

from __future__ import annotations

from pathlib import Path

from embedkit.data._files import base_suffix, iter_delimited, iter_json_lines
from embedkit.errors import DataFormatError

QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id", "question_id")
QUERY_TEXT_FIELDS = ("text", "query", "question", "question_text", "contents")


def load_queries(source: str | Path, *, id_field: str | None = None, text_field: str | None = None) -> dict[str, str]:
    """Load queries as {query id: text}, in file order.

    >>> load_queries("scifact/queries.jsonl")["1"]
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
            if id_name not in record or text_name not in record:
                missing = id_name if id_name not in record else text_name
                raise DataFormatError(f"missing field '{missing}'", path=path, line=line, fields_found=record)
            _add(queries, str(record[id_name]), str(record[text_name]), path, line)
    elif suffix in (".tsv", ".txt"):
        for line, columns in iter_delimited(path, "\t"):
            if len(columns) < 2:
                raise DataFormatError("expected 2 tab-separated columns: id, text", path=path, line=line)
            if line == 1 and columns[0].lower() in QUERY_ID_FIELDS:
                continue
            _add(queries, columns[0], columns[1], path, line)
    else:
        raise DataFormatError(f"unknown queries format '{suffix}' (use .jsonl or .tsv)", path=path)
    if not queries:
        raise DataFormatError("no queries in file", path=path)
    return queries


def _pick(explicit, candidates, record, path, line, what) -> str:
    if explicit is not None:
        return explicit
    for name in candidates:
        if name in record:
            return name
    raise DataFormatError(
        f"no query {what} field (looked for {', '.join(candidates)})", path=path, line=line, fields_found=record
    )


def _add(queries: dict[str, str], query_id: str, text: str, path: Path, line: int) -> None:
    if query_id in queries:
        raise DataFormatError(f"duplicate query id '{query_id}'", path=path, line=line)
    queries[query_id] = text
