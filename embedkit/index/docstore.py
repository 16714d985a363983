"""Document store: text and title by id (or by row) from SQLite, without loading the corpus into memory.

Row numbers are the integer ids FAISS stores; the store maps them to the user's string ids.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from embedkit.data.corpus import Document
from embedkit.errors import DataFormatError, IndexFormatError

DOCSTORE_NAME = "docstore.sqlite"


class DuplicateIdError(DataFormatError):
    """A document id added twice; `first_row` and `second_row` are the rows the two copies were given."""

    def __init__(self, doc_id: str, first_row: int, second_row: int) -> None:
        self.doc_id, self.first_row, self.second_row = doc_id, first_row, second_row
        super().__init__(f"duplicate document id {doc_id!r} (documents #{first_row + 1} and #{second_row + 1}); "
                         "document ids must be unique")


class DocStore:
    def __init__(self, path: str | Path, *, readonly: bool = True) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise IndexFormatError(f"document store {self.path} is missing")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS docs (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                "title TEXT NOT NULL, text TEXT NOT NULL)"
            )
        try:
            self._db.execute("SELECT count(*) FROM docs").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexFormatError(f"document store {self.path} is damaged: {error}") from None

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

    def next_row(self) -> int:
        value = self._db.execute("SELECT max(row) FROM docs").fetchone()[0]
        return 0 if value is None else value + 1

    def get(self, doc_id: str) -> Document | None:
        found = self._db.execute("SELECT id, title, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return Document(id=found[0], title=found[1], text=found[2]) if found else None

    def row_of(self, doc_ids: Iterable[str]) -> dict[str, int]:
        ids = list(doc_ids)
        found: dict[str, int] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = ids[start : start + 900]
            marks = ",".join("?" * len(part))
            found.update(self._db.execute(f"SELECT id, row FROM docs WHERE id IN ({marks})", part).fetchall())
        return found

    def by_rows(self, rows: Iterable[int]) -> dict[int, Document]:
        wanted = sorted({int(row) for row in rows if row >= 0})
        found: dict[int, Document] = {}
        for start in range(0, len(wanted), 900):
            part = wanted[start : start + 900]
            marks = ",".join("?" * len(part))
            for row, doc_id, title, text in self._db.execute(
                f"SELECT row, id, title, text FROM docs WHERE row IN ({marks})", part
            ):
                found[row] = Document(id=doc_id, title=title, text=text)
        return found

    def ids_by_row(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT row, id FROM docs"))

    def iter_documents(self) -> Iterable[tuple[int, Document]]:
        for row, doc_id, title, text in self._db.execute("SELECT row, id, title, text FROM docs ORDER BY row"):
            yield row, Document(id=doc_id, title=title, text=text)
