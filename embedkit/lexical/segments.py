"""What a BM25 index folder records about its segments (`manifest.json` → `segments`).

Both backends keep an updated index as segments: Lucene natively (`_0`, `_1`, … under `lucene/`), bm25s as
token files under `bm25s-segments/` (see `embedkit.lexical.bm25s_segments`). A folder built before segments
existed records none and is one segment; `embedkit index info` shows the list, `embedkit index verify` checks it.

    BM25Segment(name="_0", documents=1000, deleted=12).deleted_fraction   # 0.012
"""

from __future__ import annotations

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
