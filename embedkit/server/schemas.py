"""Request and response bodies. `/retrieve` matches Search-R1's retrieval server field for field.

Requests are validated strictly: `"topk": "3"`, `3.0` or `true` and `"return_scores": "yes"` are 422s, not
silently converted (a client sending them has a bug worth hearing about).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

STRICT = ConfigDict(strict=True)


def _check_text(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    return values


class RetrieveRequest(BaseModel):
    """Search-R1: `{"queries": [...], "topk": 3, "return_scores": true}`."""

    model_config = ConfigDict(strict=True, json_schema_extra={"examples": [
        {"queries": ["who wrote Hamlet?"], "topk": 3, "return_scores": True}]})

    queries: list[str]
    topk: int | None = Field(None, description="hits per query; omitted, null or 0: the server's default (3)")
    return_scores: bool = False

    _text = field_validator("queries")(_check_text)


class RetrievedDocument(BaseModel):
    id: str
    contents: str = Field(description='title and text separated by a newline: "title\\ntext"')


class ScoredDocument(BaseModel):
    document: RetrievedDocument
    score: float


class RetrieveResponse(BaseModel):
    """`result[i]` lists the hits of `queries[i]`: `{document, score}` objects with return_scores, else documents."""

    result: list[list[ScoredDocument]] | list[list[RetrievedDocument]]


class FusionRequestBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    method: str = "rrf"
    rrf_k: float = Field(60.0, ge=0, le=1e6)
    alpha: float | None = Field(None, ge=0, le=1, description="weight of the dense ranking (interpolate)")
    normalization: Literal["minmax", "zscore"] = "minmax"


class SearchRequestBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [
        {"queries": ["statins and heart disease"], "mode": "hybrid", "k": 5}]})

    queries: list[str]
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(None, description="default: the server's retrieve mode")
    k: int = Field(10, description="hits per query")
    include_ids: list[str] | None = Field(None, description="only these documents may be returned")
    exclude_ids: list[str] | None = Field(None, description="these documents are never returned")
    fusion: FusionRequestBase | None = Field(None, description="hybrid mode: overrides the server's fusion settings")

    _text = field_validator("queries", "include_ids", "exclude_ids")(_check_text)


@lru_cache(maxsize=8)
def search_request_model(fusion_methods: Sequence[str]) -> type[SearchRequestBase]:
    """`/search`'s body with `fusion.method` limited to the fusion registry's names (so the schema lists them)."""
    methods = tuple(sorted(fusion_methods))
    if not methods:
        raise ValueError("no fusion methods registered")
    # A Literal built at run time from the registry's names: type checkers see only the special form.
    method_type: Any = Literal[methods]
    fusion = create_model("FusionRequest", __base__=FusionRequestBase,
                          method=(method_type, Field("rrf" if "rrf" in methods else methods[0],
                                                          description="a registered fusion method")))
    return create_model("SearchRequest", __base__=SearchRequestBase,
                        fusion=(fusion | None, Field(None, description="hybrid mode: overrides the server's "
                                                                            "fusion settings")))


class SearchHit(BaseModel):
    id: str
    title: str
    text: str
    score: float
    rank: int


class SearchResponse(BaseModel):
    mode: str
    k: int
    results: list[list[SearchHit]]


class ErrorResponse(BaseModel):
    detail: str | list


class ServedIndex(BaseModel):
    path: str
    documents: int
    version: str = Field(description="sha-256 (first 16 hex digits) of the manifest.json being served")
    updated_at: str | None = Field(None, description="time of the manifest's latest history entry")
    loaded_at: str
    document_bytes: int | None = Field(None, description="mean size of a document in an answer (id, title, text); "
                                       "answers are estimated with it against limits.max_response_bytes")
    segments: dict[str, int] | None = Field(None, description="how the last reload of a segmented dense folder got "
                                            "its segments: kept as loaded, refreshed (only a new deletion file "
                                            "read), read from disk")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    modes: list[str]
    documents: dict[str, int]
    indexes: dict[str, ServedIndex]
    reload_errors: dict[str, str] | None = Field(None, description="why an updated folder could not be loaded "
                                                 "(the previous state is still served)")
