"""Request and response bodies. `/retrieve` matches Search-R1's retrieval server field for field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _check_text(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    return values


class RetrieveRequest(BaseModel):
    """Search-R1: `{"queries": [...], "topk": 3, "return_scores": true}`."""

    model_config = ConfigDict(json_schema_extra={"examples": [
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


class FusionRequest(BaseModel):
    method: Literal["rrf", "interpolate"] = "rrf"
    rrf_k: float = Field(60.0, ge=0, le=1e6)
    alpha: float | None = Field(None, ge=0, le=1, description="weight of the dense ranking (interpolate)")
    normalization: Literal["minmax", "zscore"] = "minmax"


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"queries": ["statins and heart disease"], "mode": "hybrid", "k": 5}]})

    queries: list[str]
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(None, description="default: the server's retrieve mode")
    k: int = Field(10, description="hits per query")
    include_ids: list[str] | None = Field(None, description="only these documents may be returned")
    exclude_ids: list[str] | None = Field(None, description="these documents are never returned")
    fusion: FusionRequest | None = Field(None, description="hybrid mode: overrides the server's fusion settings")

    _text = field_validator("queries", "include_ids", "exclude_ids")(_check_text)


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


class HealthResponse(BaseModel):
    status: Literal["ok"]
    modes: list[str]
    documents: dict[str, int]
