"""Document store: text and title by id (or by row) from SQLite, without loading the corpus into memory.

Row numbers are the integer ids FAISS stores; the store maps them to the user's string ids.

A store comes from an index folder, which may come from a stranger: opening one checks that its `docs` table
has the layout embedkit writes (a table with those columns and constraints, no views or triggers), so a store
written by something else is reported as damage at open, not as an SQLite error at the first search.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from embedkit.data.corpus import Document
from embedkit.errors import DataFormatError, IndexFormatError

DOCSTORE_NAME = "docstore.sqlite"
SCHEMA = ("CREATE TABLE IF NOT EXISTS docs (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
          "title TEXT NOT NULL, text TEXT NOT NULL)")
# PRAGMA table_info(docs) as (name, declared type, not null, primary key) for SCHEMA.
COLUMNS = [("row", "INTEGER", 0, 1), ("id", "TEXT", 1, 0), ("title", "TEXT", 1, 0), ("text", "TEXT", 1, 0)]


class DuplicateIdError(DataFormatError):
    """A document id added twice; `first_row` and `second_row` are the rows the two copies were given."""

    def __init__(self, doc_id: str, first_row: int, second_row: int) -> None:
        self.doc_id, self.first_row, self.second_row = doc_id, first_row, second_row
        super().__init__(f"duplicate document id {doc_id!r} (documents #{first_row + 1} and #{second_row + 1}); "
                         "document ids must be unique")


class DocStore:
    def __init__(self, path: str | Path, *, readonly: bool = True, read_all: bool = True) -> None:
        """`read_all=False` skips reading every row at open (an update's lookups touch a few pages; a search
        opens with the full read, which reports a damaged page here rather than at the first query)."""
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise IndexFormatError(f"document store {self.path} is missing")
                self._db = sqlite3.connect(_readonly_uri(self.path), uri=True, check_same_thread=False)
            else:
                self._db = sqlite3.connect(self.path, check_same_thread=False)
            # Schema objects of a store from elsewhere (views, triggers, defaults) must not run as ours.
            self._db.execute("PRAGMA trusted_schema = OFF")
            if not readonly:
                self._db.execute(SCHEMA)
            self._check_schema()
            self._db.execute("SELECT count(*) FROM docs" if read_all else "SELECT max(row) FROM docs").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexFormatError(f"document store {self.path} is damaged: {error}") from None

    def _check_schema(self) -> None:
        """Refuse a store whose `docs` is not the table `SCHEMA` creates (checked on every open: a few PRAGMAs)."""
        objects = self._db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') "
                                   "OR name = 'docs'").fetchall()
        columns = [(name, kind.upper(), notnull, pk)
                   for _, name, kind, notnull, _, pk in self._db.execute("PRAGMA table_info(docs)")]
        unique_id = any(
            unique and [column for _, _, column in self._db.execute(f"PRAGMA index_info('{name}')")] == ["id"]
            for _, name, unique, *_ in self._db.execute("PRAGMA index_list(docs)"))
        if objects != [("table", "docs")] or columns != COLUMNS or not unique_id:
            found = ", ".join(f"{name} {kind}" for name, kind, *_ in columns) or "no docs table"
            extra = sorted(f"{kind} {name}" for kind, name in objects if (kind, name) != ("table", "docs"))
            raise IndexFormatError(
                f"document store {self.path} is damaged: it is not a store embedkit wrote (expected the table "
                f"docs(row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL); "
                f"found {found}{'; also ' + ', '.join(extra) if extra else ''}); rebuild the index")

    def check_contents(self, next_row: int | None = None) -> None:
        """Full check (`embedkit index verify`): every value has the type the schema declares and every row is a
        FAISS id below `next_row`. Reads the whole table."""
        bad = self._db.execute("SELECT row, typeof(id), typeof(title), typeof(text) FROM docs WHERE typeof(id) != "
                               "'text' OR typeof(title) != 'text' OR typeof(text) != 'text' LIMIT 1").fetchone()
        if bad is not None:
            raise IndexFormatError(f"document store {self.path} is damaged: row {bad[0]} holds id/title/text of "
                                   f"types {bad[1]}/{bad[2]}/{bad[3]}, not text; rebuild the index")
        low, high = self._db.execute("SELECT min(row), max(row) FROM docs").fetchone()
        if low is not None and (low < 0 or (next_row is not None and high >= next_row)):
            raise IndexFormatError(
                f"document store {self.path} is damaged: its rows run from {low} to {high}, but FAISS rows are 0 to "
                f"{'…' if next_row is None else next_row - 1} (manifest next_row {next_row}); rebuild the index")

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM docs").fetchone()[0]

    def add(self, rows: Sequence[int], documents: Sequence[Document]) -> None:
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO docs (row, id, title, text) VALUES (?, ?, ?, ?)",
                    [(row, doc.id, doc.title, doc.text) for row, doc in zip(rows, documents, strict=True)],
                )
        except sqlite3.IntegrityError as error:
            raise self._duplicate(rows, documents) or DataFormatError(f"cannot store documents: {error}") from None

    def _duplicate(self, rows: Sequence[int], documents: Sequence[Document]) -> DuplicateIdError | None:
        """Which id of a failed insert was already stored (or repeated within the batch), and at which rows."""
        ids = [doc.id for doc in documents]
        stored = self.row_of(ids)
        seen: dict[str, int] = {}
        for row, doc_id in zip(rows, ids, strict=True):
            if doc_id in stored:
                return DuplicateIdError(doc_id, stored[doc_id], row)
            if doc_id in seen:
                return DuplicateIdError(doc_id, seen[doc_id], row)
            seen[doc_id] = row
        return None

    def delete_rows(self, rows: Iterable[int]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM docs WHERE row = ?", [(int(row),) for row in rows])

    def row_range(self) -> tuple[int, int] | None:
        """The lowest and highest row stored (None when empty): two lookups in the row index, no scan."""
        # Two statements: SQLite answers min() or max() alone from the index, but scans the table for both at once.
        low = self._db.execute("SELECT min(row) FROM docs").fetchone()[0]
        high = self._db.execute("SELECT max(row) FROM docs").fetchone()[0]
        return None if low is None else (int(low), int(high))

    def next_row(self) -> int:
        value = self._db.execute("SELECT max(row) FROM docs").fetchone()[0]
        return 0 if value is None else value + 1

    def get(self, doc_id: str) -> Document | None:
        found = self._db.execute("SELECT row, id, title, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return self._document(*found) if found else None

    def _document(self, row: int, doc_id: object, title: object, text: object) -> Document:
        # SQLite stores any type in any column; a value that is not text is damage, not a document.
        if not (isinstance(doc_id, str) and isinstance(title, str) and isinstance(text, str)):
            raise IndexFormatError(f"document store {self.path} is damaged: row {row} holds id/title/text of types "
                                   f"{type(doc_id).__name__}/{type(title).__name__}/{type(text).__name__}, not text; "
                                   "rebuild the index")
        return Document(id=doc_id, title=title, text=text)

    def row_of(self, doc_ids: Iterable[str]) -> dict[str, int]:
        ids = list(doc_ids)
        found: dict[str, int] = {}
        try:
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                part = ids[start : start + 900]
                marks = ",".join("?" * len(part))
                found.update(self._db.execute(f"SELECT id, row FROM docs WHERE id IN ({marks})", part).fetchall())
        except sqlite3.DatabaseError as error:
            raise IndexFormatError(f"document store {self.path} is damaged: {error}") from None
        return found

    def present_rows(self, rows: Iterable[int]) -> list[int]:
        """Those of `rows` that hold a document, ascending."""
        wanted = sorted({int(row) for row in rows})
        found: list[int] = []
        for start in range(0, len(wanted), 900):
            part = wanted[start : start + 900]
            marks = ",".join("?" * len(part))
            found += [row for (row,) in self._db.execute(f"SELECT row FROM docs WHERE row IN ({marks})", part)]
        return sorted(found)

    def by_rows(self, rows: Iterable[int]) -> dict[int, Document]:
        wanted = sorted({int(row) for row in rows if row >= 0})
        found: dict[int, Document] = {}
        for start in range(0, len(wanted), 900):
            part = wanted[start : start + 900]
            marks = ",".join("?" * len(part))
            for row, doc_id, title, text in self._db.execute(
                f"SELECT row, id, title, text FROM docs WHERE row IN ({marks})", part
            ):
                found[row] = self._document(row, doc_id, title, text)
        return found

    def ids_by_row(self) -> dict[int, str]:
        ids = dict(self._db.execute("SELECT row, id FROM docs"))
        for row, doc_id in ids.items():
            if not isinstance(doc_id, str):
                self._document(row, doc_id, "", "")  # raises: the id is not text
        return ids

    def iter_documents(self) -> Iterable[tuple[int, Document]]:
        for row, doc_id, title, text in self._db.execute("SELECT row, id, title, text FROM docs ORDER BY row"):
            yield row, self._document(row, doc_id, title, text)


def _readonly_uri(path: Path) -> str:
    """An SQLite read-only URI for `path`; quoted, so a folder named with '?' or '#' is not cut short."""
    return f"file:{quote(str(path.absolute()))}?mode=ro"
