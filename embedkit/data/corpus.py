"""Streaming corpus reader: BEIR, pyserini, generic jsonl/tsv/csv/parquet, `datasets` folders and hub ids.

Documents are yielded one at a time, so nothing holds the corpus text in memory::

    for doc in iter_documents("scifact/corpus.jsonl"):
        print(doc.id, doc.title, doc.text[:40])
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.data._files import base_suffix, iter_delimited, iter_json_lines, open_text
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
    """Which record fields hold id, text and title. Unset fields are detected from common names."""

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

    def document(self, record: dict[str, Any], *, path: Path | str, line: int | None) -> Document:
        assert self.id_field and self.text_field
        try:
            doc_id, text = record[self.id_field], record[self.text_field]
        except KeyError as error:
            raise DataFormatError(
                f"missing field '{error.args[0]}'", path=path, line=line, fields_found=record
            ) from None
        if doc_id is None or str(doc_id) == "":
            raise DataFormatError("empty document id", path=path, line=line, field=self.id_field)
        if text is None:
            text = ""
        title = record.get(self.title_field) if self.title_field else ""
        return Document(id=str(doc_id), text=str(text), title=str(title or ""))


def _records(source: str | Path) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """Yield (where, line, record) from any supported source."""
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
            yield str(path), line, record
    elif suffix in (".tsv", ".csv", ".txt"):
        yield from _delimited_records(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield str(path), row, record
    else:
        raise DataFormatError(f"unknown corpus format '{suffix}' (use .jsonl, .tsv, .csv or .parquet)", path=path)


def _delimited_records(path: Path, delimiter: str) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """A header row is used when it names an id and a text column; otherwise columns are id, text[, title]."""
    known = set(ID_FIELDS) | set(TEXT_FIELDS) | set(TITLE_FIELDS)
    if delimiter == ",":
        with open_text(path) as handle:
            rows = ((n, row) for n, row in enumerate(csv.reader(handle), start=1) if row)
            yield from _rows_to_records(path, rows, known)
    else:
        yield from _rows_to_records(path, iter_delimited(path, "\t"), known)


def _rows_to_records(path: Path, rows, known: set[str]) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    header: list[str] | None = None
    for line, columns in rows:
        if header is None and line == 1 and len(set(columns) & known) >= 2:
            header = columns
            continue
        names = header or ["id", "text", "title"][: len(columns)]
        if len(columns) < 2:
            raise DataFormatError(f"expected at least 2 columns (id, text), got {len(columns)}", path=path, line=line)
        yield str(path), line, dict(zip(names, columns, strict=False))


def _datasets_folder_records(path: Path) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        split = "corpus" if "corpus" in loaded else next(iter(loaded))
        loaded = loaded[split]
    for row, record in enumerate(loaded, start=1):
        yield str(path), row, record


def _hub_records(spec: str) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as error:  # the hub client raises many unrelated types
        raise DataFormatError(f"cannot load hub dataset '{name}': {error}") from None
    for row, record in enumerate(stream, start=1):
        yield f"hf:{spec}", row, record


def iter_documents(
    source: str | Path, fields: FieldMap | None = None, *, check_duplicates: bool = True
) -> Iterator[Document]:
    """Stream documents from `source`; raises `DataFormatError` naming file, line and field on bad input."""
    fields = fields or FieldMap()
    resolved: FieldMap | None = None
    seen: dict[str, int | None] = {}
    count = 0
    where = str(source)
    for where, line, record in _records(source):
        if resolved is None:
            resolved = fields.resolve(record, path=where, line=line)
        document = resolved.document(record, path=where, line=line)
        if check_duplicates:
            if document.id in seen:
                first = seen[document.id]
                raise DataFormatError(
                    f"duplicate document id '{document.id}' (first seen on line {first})", path=where, line=line
                )
            seen[document.id] = line
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
    with open_text(path) as handle:
        return sum(1 for line in handle if line.strip())
