"""What a BM25 index folder records about its segments (`manifest.json` → `segments`).

Both backends keep an updated index as segments: Lucene natively (`_0`, `_1`, … under `lucene/`), bm25s as
token files under `bm25s-segments/` (see `embedkit.lexical.bm25s_segments`). A folder built before segments
existed records none and is one segment; `embedkit index info` shows the list, `embedkit index verify` checks it.

The folder's document store is kept in parts the same way (`DocstorePart`, read by `embedkit.index.docstore_parts`).

    BM25Segment(name="_0", documents=1000, deleted=12).deleted_fraction   # 0.012
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BM25Segment(BaseModel):
    """One segment: how many documents it indexed and how many of those were deleted (or replaced) since."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A plain name: bm25s segments are folders of the index folder, so it must not lead anywhere else.
    name: str = Field(pattern=r"^[A-Za-z0-9_]{1,64}$")
    documents: int = Field(ge=0)
    deleted: int = Field(0, ge=0)
    first_row: int | None = Field(None, ge=0, description="bm25s: the document-store row of its first document "
                                  "(its documents have the rows that follow)")
    size: int | None = Field(None, ge=0, description="bytes of its files")

    @model_validator(mode="after")
    def _deleted_within(self) -> BM25Segment:
        if self.deleted > self.documents:
            raise ValueError(f"segment {self.name}: {self.deleted} deleted of {self.documents} documents")
        return self

    def holds(self, row: int) -> bool:
        return self.first_row is not None and self.first_row <= row < self.first_row + self.documents

    @property
    def deleted_fraction(self) -> float:
        return self.deleted / self.documents if self.documents else 0.0


def summarize(segments: list[BM25Segment]) -> str:
    """`2 segments (_0: 1000 documents, 12 deleted, 81,920 bytes; _1: 10 documents, 2,048 bytes)` for reports."""
    if not segments:
        return "no segments recorded (built before updates recorded them, or a Lucene index left empty)"
    parts = [f"{s.name}: {s.documents} documents" + (f", {s.deleted} deleted" if s.deleted else "")
             + (f", {s.size:,} bytes" if s.size is not None else "") for s in segments]
    return f"{len(segments)} segment{'s' if len(segments) != 1 else ''} ({'; '.join(parts)})"


# Names embedkit gives document-store parts and their deletion files (the dense segment names,
# `embedkit.index.manifest.segment_file`); part 0 of a folder built whole keeps `docstore.sqlite`.
PART_STORE = re.compile(r"^seg-(?P<id>\d{6,})\.docstore\.sqlite$")
PART_DELETED = re.compile(r"^seg-(?P<id>\d{6,})\.del-(?P<gen>\d{6,})\.npy$")


class DocstorePart(BaseModel):
    """One part of a BM25 folder's document store (`BM25Manifest.docstore_parts`): an SQLite file holding the
    rows [row_start, row_stop) it was given, and the deletion file listing those of them deleted since (sorted
    int64 rows, `embedkit.index.masked`). A part's files never change; an update writes new ones.

        DocstorePart(id=3, docstore="seg-000003.docstore.sqlite", row_start=1000, row_stop=1010, num_stored=10)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0, description="the generation that wrote it (0: the build's docstore.sqlite)")
    docstore: str
    deleted: str | None = None
    row_start: int = Field(ge=0)
    row_stop: int = Field(ge=0)
    num_stored: int = Field(ge=0, description="rows its SQLite file holds")
    num_deleted: int = Field(0, ge=0, description="rows its deletion file lists")

    @model_validator(mode="after")
    def _consistent(self) -> DocstorePart:
        # Plain names only: the folder comes from strangers, and a name must not lead a reader elsewhere.
        store = PART_STORE.match(self.docstore)
        if not (store and int(store["id"]) == self.id) and not (self.id == 0 and self.docstore == "docstore.sqlite"):
            raise ValueError(f"part {self.id}: {self.docstore!r} is not a name embedkit gives a document-store part")
        deleted = PART_DELETED.match(self.deleted or "")
        if self.deleted is not None and not (deleted and int(deleted["id"]) == self.id):
            raise ValueError(f"part {self.id}: {self.deleted!r} is not a name embedkit gives its deletion file")
        if self.row_stop < self.row_start or self.num_stored > self.row_stop - self.row_start:
            raise ValueError(f"part {self.id}: {self.num_stored} rows cannot fit rows {self.row_start}.."
                             f"{self.row_stop - 1}")
        if self.num_deleted > self.num_stored or (self.num_deleted > 0) != (self.deleted is not None):
            raise ValueError(f"part {self.id}: {self.num_deleted} deleted rows of {self.num_stored}, deletion file "
                             f"{self.deleted!r}")
        return self

    @property
    def num_docs(self) -> int:
        """Its live documents."""
        return self.num_stored - self.num_deleted

    def files(self) -> list[str]:
        return [self.docstore, *([self.deleted] if self.deleted else [])]
