"""BM25 build settings: backend, k1/b, and how title and text map to Lucene fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedkit.errors import EmbedkitError
from embedkit.index.merge_policy import MergePolicy

FIELD_NAMES = ("contents", "title")


#: The merge policy of BM25 folders is the one of dense folders (`embedkit.index.merge_policy`): a BM25 backend
#: can only compact the whole index, so any merge due compacts it. The old name stays for existing callers.
BM25MergePolicy = MergePolicy


class BM25Settings(BaseModel):
    """How a BM25 index is built and scored. Recorded in the index manifest under `settings`.

    `fields=None` indexes title and text as one field (`contents` = title + " " + text), the BEIR "flat"
    convention. `{"contents": 1.0, "title": 0.5}` indexes the text as `contents` and the title as its own
    field, and a query scores the weighted sum of both (BEIR "multifield"; pyserini backend only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["pyserini", "bm25s"] = "pyserini"
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    fields: dict[str, float] | None = None
    language: str = "english"
    threads: int = Field(1, ge=1)
    merge: MergePolicy = Field(default_factory=MergePolicy)

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; fields are {', '.join(FIELD_NAMES)}")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("field weights must be >= 0")
        return {"contents": value.get("contents", 1.0), **{k: v for k, v in value.items() if k != "contents"}}

    @property
    def multifield(self) -> bool:
        return self.fields is not None and "title" in self.fields


def parse_fields(items: list[str] | None) -> dict[str, float] | None:
    """`["contents=1.0", "title=0.5"]` → `{"contents": 1.0, "title": 0.5}`; a bare name weighs 1.0."""
    if not items:
        return None
    fields: dict[str, float] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, _, weight = part.partition("=")
            if name not in FIELD_NAMES:
                raise EmbedkitError(f"--fields: unknown field '{name}' (use {' and '.join(FIELD_NAMES)}, e.g. "
                                    "--fields contents=1.0 title=0.5)")
            try:
                fields[name] = float(weight) if weight else 1.0
            except ValueError:
                raise EmbedkitError(f"--fields: weight '{weight}' of '{name}' is not a number") from None
    return fields
