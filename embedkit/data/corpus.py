"""Streaming corpus reader: BEIR, pyserini, generic jsonl/tsv/csv/parquet, `datasets` folders and hub ids.

Documents are yielded one at a time, so nothing holds the corpus text in memory::

    for doc in iter_documents("scifact/corpus.jsonl"):
        print(doc.id, doc.title, doc.text[:40])
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.data._files import (
    base_suffix,
    check_id,
    iter_csv_rows,
    iter_json_lines,
    iter_tsv_rows,
    open_binary,
)
from embedkit.errors import DataFormatError

ID_FIELDS = ("_id", "id", "docid", "doc_id", "pid")
TEXT_FIELDS = ("text", "contents", "content", "passage", "body", "paragraph_text")
TITLE_FIELDS = ("title",)


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""

    def joined(self, separator: str = " ") -> str:
        """Title and text as one string: what the encoder and BM25 see (BEIR/MTEB convention)."""
        return f"{self.title}{separator}{self.text}".strip() if self.title else self.text

    def contents(self) -> str:
        """Search-R1's `contents`: title and text on separate lines."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class FieldMap:
    """Which record fields hold id, text and title. Unset fields are detected from common names (exact
    spelling first, then in any case: "ID", "Text")."""

    id_field: str | None = None
    text_field: str | None = None
    title_field: str | None = None

    def resolve(self, record: dict[str, Any], *, path: Path | str, line: int | None) -> FieldMap:
        def pick(explicit: str | None, candidates: tuple[str, ...], what: str, required: bool) -> str | None:
            if explicit is not None:
                if explicit not in record:
                    raise DataFormatError(
                        f"no '{explicit}' field for the document {what}", path=path, line=line, fields_found=record
                    )
                return explicit
            for name in candidates:
                if name in record:
                    return name
            by_lower = {str(key).lower(): key for key in record}
            for name in candidates:  # "ID", "Text" (spreadsheet headers): the exact spelling wins when both exist
                if name in by_lower:
                    return by_lower[name]
            if required:
                raise DataFormatError(
                    f"no document {what} field (looked for {', '.join(candidates)}; set --{what}-field)",
                    path=path,
                    line=line,
                    fields_found=record,
                )
            return None

        return FieldMap(
            id_field=pick(self.id_field, ID_FIELDS, "id", True),
            text_field=pick(self.text_field, TEXT_FIELDS, "text", True),
            title_field=pick(self.title_field, TITLE_FIELDS, "title", False),
        )

    def document(self, record: dict[str, Any], *, path: Path | str, line: int | None, columnar: bool = False) -> Document:
        """The record as a `Document`; ids and texts of the wrong JSON type are refused, never converted.

        Ids must be strings (integers too when they come from a typed column: Parquet, saved datasets) without
        control characters; text and title must be strings or null.
        """
        assert self.id_field and self.text_field
        try:
            raw_id, raw_text = record[self.id_field], record[self.text_field]
        except KeyError as error:
            raise DataFormatError(
                f"missing field '{error.args[0]}'", path=path, line=line, fields_found=record
            ) from None
        doc_id = _id_value(raw_id, path=path, line=line, field=self.id_field, columnar=columnar)
        text = _text_value(raw_text, path=path, line=line, field=self.text_field)
        title = _text_value(record.get(self.title_field), path=path, line=line, field=self.title_field) \
            if self.title_field else ""
        return Document(id=doc_id, text=text, title=title)


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(type(value))
    shown = json.dumps(value, ensure_ascii=False, default=str) if kind else repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind or type(value).__name__} {shown}"


def _id_value(value: Any, *, path: Path | str, line: int | None, field: str, columnar: bool) -> str:
    if isinstance(value, str):
        if value == "":
            raise DataFormatError("empty document id", path=path, line=line, field=field)
        return check_id(value, what="document id", path=path, line=line, field=field)
    if columnar and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise DataFormatError("empty document id", path=path, line=line, field=field)
    hint = f' (write it as a string: "{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
    raise DataFormatError(f"document id must be a string, got {_describe(value)}{hint}", path=path, line=line,
                          field=field)


def _text_value(value: Any, *, path: Path | str, line: int | None, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise DataFormatError(f"expected a string, got {_describe(value)}", path=path, line=line, field=field)


Row = tuple[str, "int | None", dict[str, Any], bool]  # where, line (or row), record, from a typed column store


def _records(source: str | Path) -> Iterator[Row]:
    """Yield (where, line, record, columnar) from any supported source."""
    text_source = str(source)
    if text_source.startswith("hf:"):
        yield from _hub_records(text_source[3:])
        return
    path = Path(source)
    if path.is_dir():
        if (path / "corpus.jsonl").exists() or (path / "corpus.jsonl.gz").exists():
            inner = path / "corpus.jsonl" if (path / "corpus.jsonl").exists() else path / "corpus.jsonl.gz"
            yield from _records(inner)
        elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _datasets_folder_records(path)
        else:  # a pyserini-style folder of jsonl files
            files = sorted(p for p in path.iterdir() if base_suffix(p) in (".jsonl", ".json"))
            if not files:
                raise DataFormatError("folder holds no corpus.jsonl, no saved dataset and no .jsonl files", path=path)
            for file in files:
                yield from _records(file)
        return
    if not path.exists():
        raise DataFormatError(f"corpus not found: {path} (for a hub dataset write hf:NAME)")
    suffix = base_suffix(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        for line, record in iter_json_lines(path):
            yield str(path), line, record, False
    elif suffix in (".tsv", ".csv", ".txt"):
        yield from _delimited_records(path, suffix)
    elif suffix == ".parquet":
        yield from _parquet_records(path)
    else:
        raise DataFormatError(f"unknown corpus format '{suffix}' (use .jsonl, .tsv, .csv or .parquet)", path=path)


def _parquet_records(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        handle = pq.ParquetFile(path)
        names = handle.schema_arrow.names
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # a row as a dict keeps only the last of them, silently
            raise DataFormatError(f"column '{repeated[0]}' appears twice; keep one of them", path=path)
        batches = handle.iter_batches(batch_size=4096)
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield str(path), row, record, True
    except (pa.ArrowException, OSError) as error:
        where = f" (after row {row})" if row else ""
        raise DataFormatError(f"cannot read as Parquet{where}: {error}", path=path) from None


def _delimited_records(path: Path, suffix: str) -> Iterator[Row]:
    """Rows of a .tsv/.txt (tab) or .csv file as records.

    The first row is a header when it names at least two known columns (id, text, title, ..., in any case:
    "ID", "Text"); otherwise the columns are id, text[, title]. Every row must have as many columns as the
    header (or the first row): a row with a stray tab or comma is refused, never cut.
    """
    known = set(ID_FIELDS) | set(TEXT_FIELDS) | set(TITLE_FIELDS)
    rows = iter_csv_rows(path) if suffix == ".csv" else iter_tsv_rows(path)
    separator = "commas" if suffix == ".csv" else "tabs"
    names: list[str] | None = None
    described = ""
    for line, columns in rows:
        if names is None:
            if len({column.strip().lower() for column in columns} & known) >= 2:
                duplicated = sorted({name for name in columns if columns.count(name) > 1})
                if duplicated:
                    raise DataFormatError(f"header names column '{duplicated[0]}' twice", path=path, line=line)
                names, described = columns, f"the header (line {line})"
                continue
            if len(columns) not in (2, 3):
                raise DataFormatError(
                    f"expected 2 columns (id, text) or 3 (id, text, title) separated by {separator}, "
                    f"got {len(columns)} (or add a header row naming the columns)", path=path, line=line
                )
            names, described = ["id", "text", "title"][: len(columns)], f"line {line}"
        if len(columns) != len(names):
            raise DataFormatError(
                f"expected {len(names)} columns like {described}, got {len(columns)}"
                + (" (a text holding a tab must be a quoted field: \"...\")" if suffix != ".csv" else ""),
                path=path, line=line,
            )
        yield str(path), line, dict(zip(names, columns, strict=True)), False


def _datasets_folder_records(path: Path) -> Iterator[Row]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid, ...
        raise DataFormatError(f"cannot load the saved dataset: {type(error).__name__}: {error}", path=path) from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "corpus" if "corpus" in loaded else next(iter(loaded))
        loaded = loaded[split]
    for row, record in enumerate(loaded, start=1):
        yield str(path), row, record, True


def _hub_records(spec: str) -> Iterator[Row]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as error:  # the hub client raises many unrelated types
        raise DataFormatError(f"cannot load hub dataset '{name}': {error}") from None
    for row, record in enumerate(stream, start=1):
        yield f"hf:{spec}", row, record, True


def iter_documents(
    source: str | Path, fields: FieldMap | None = None, *, check_duplicates: bool = True
) -> Iterator[Document]:
    """Stream documents from `source`; raises `DataFormatError` naming file, line and field on bad input."""
    fields = fields or FieldMap()
    resolved: FieldMap | None = None
    seen: dict[str, tuple[str, int | None]] = {}  # id -> (file, line) of its first record
    count = 0
    where = str(source)
    for where, line, record, columnar in _records(source):
        if resolved is None:
            resolved = fields.resolve(record, path=where, line=line)
        elif resolved.title_field is None and fields.title_field is None and "title" in record:
            resolved = FieldMap(resolved.id_field, resolved.text_field, "title")  # first titled record
        document = resolved.document(record, path=where, line=line, columnar=columnar)
        if check_duplicates:
            if document.id in seen:
                first_where, first_line = seen[document.id]
                first = f"line {first_line}" if first_where == where else f"{first_where}, line {first_line}"
                raise DataFormatError(f"duplicate document id '{document.id}' (first seen on {first})", path=where,
                                      line=line)
            seen[document.id] = (where, line)
        count += 1
        yield document
    if count == 0:
        raise DataFormatError("the corpus has no documents", path=where)


def count_documents(source: str | Path) -> int | None:
    """Cheap size estimate for progress bars: line count of a single text file, None when unknown."""
    path = Path(str(source))
    if path.is_dir():
        inner = path / "corpus.jsonl"
        if not inner.exists():
            return None
        path = inner
    if not path.is_file() or base_suffix(path) not in (".jsonl", ".json", ".ndjson", ".tsv", ".txt", ".csv"):
        return None
    try:
        with open_binary(path) as handle:
            return sum(1 for line in handle if line.strip())
    except (DataFormatError, OSError, EOFError, zlib.error):
        return None  # the reader reports the problem with its line number
