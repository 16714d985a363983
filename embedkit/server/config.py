"""Server settings: which indexes, where to listen, auth, limits and micro-batching. Loadable from YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedkit.config import load_yaml_mapping, validate_config
from embedkit.hybrid.fusion import FusionConfig

API_KEY_ENV = "EMBEDKIT_API_KEY"
Mode = Literal["dense", "bm25", "hybrid"]


class Limits(BaseModel):
    """Requests beyond these get a 4xx with a message naming the limit (never a 500 or a stalled worker)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_topk: int = Field(100, ge=1)
    max_queries: int = Field(256, ge=1, description="queries per request")
    max_query_chars: int = Field(4096, ge=1)
    max_filter_ids: int = Field(10_000, ge=0, description="ids in include_ids/exclude_ids of /search")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)


class BatchingConfig(BaseModel):
    """Micro-batching: requests arriving while a search runs (or within max_wait_ms) share the next call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    max_batch_size: int = Field(128, ge=1, description="queries per search call")
    max_wait_ms: float = Field(2.0, ge=0, description="how long the first request of a batch waits for company")


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: str | None = Field(None, description="the main index folder (dense or bm25)")
    bm25: str | None = Field(None, description="a BM25 index folder, for bm25 and hybrid modes")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description=f"bearer token; default: ${API_KEY_ENV}")
    default_topk: int = Field(3, ge=1, description="topk of /retrieve when the request omits it (Search-R1: 3)")
    retrieve_mode: Mode | None = Field(None, description="mode of /retrieve (default: the main index's kind)")
    hybrid_depth: int = Field(100, ge=1, description="hits per index that enter hybrid fusion")
    filter_depth: int = Field(1000, ge=1, description="hits examined when /search filters by include_ids")
    fusion: FusionConfig = FusionConfig()
    limits: Limits = Limits()
    batching: BatchingConfig = BatchingConfig()
    device: str = "auto"
    encode_batch_size: int = Field(64, ge=1)
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice); "
                                      "1 is much faster on machines whose cores are shared with other jobs")

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> ServerConfig:
        return validate_config(cls, {**load_yaml_mapping(path), **overrides}, path=path)
