"""Server settings: which indexes, where to listen, auth, limits, micro-batching and reloading. Loadable from YAML.

    config = ServerConfig.from_yaml("configs/serve.yaml", overrides={"limits.max_topk": 50})
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from embedkit.config import YamlConfig
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding.config import Backend as EncoderBackend
from embedkit.hybrid.fusion import FusionConfig

API_KEY_ENV = "EMBEDKIT_API_KEY"
Mode = Literal["dense", "bm25", "hybrid"]
Backend = Literal["faiss", "faiss-gpu", "torch"]
Slot = Literal["dense", "bm25"]

#: Settings that only a dense index honours. They are given to the dense index alone; on a server without one
#: a value other than the default would do nothing, so it is refused (`ServerConfig.check_dense_settings`).
#: Their defaults pass: a config that spells them out (configs/serve.yaml) serves every index kind.
DENSE_SETTINGS = ("backend", "mmap", "encoder_backend")

#: Queries per request. Far above what RL loops send (Search-R1: train_batch_size 512 x n_agent 5 = 2,560
#: queries in one POST); large requests are split into encoder batches inside the server.
DEFAULT_MAX_QUERIES = 100_000


class Limits(YamlConfig):
    """Requests beyond these get a 4xx with a message naming the limit (never a 500 or a stalled worker)."""

    max_topk: int = Field(100, ge=1)
    max_queries: int = Field(DEFAULT_MAX_QUERIES, ge=1,
                             description="queries per request; larger requests get 413 (default 100,000)")
    max_query_chars: int = Field(4096, ge=1)
    max_filter_ids: int = Field(10_000, ge=0, description="ids in include_ids/exclude_ids of /search")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                description="request body size, counted while it is read (chunked bodies too)")
    max_response_bytes: int = Field(256 * 1024 * 1024, ge=1024,
                                    description="answer size, estimated before searching (queries x hits x the "
                                    "index's mean document size); larger requests get 413. Answers are streamed "
                                    "slice by slice, so this bounds what one request asks for, not server memory")


class BatchingConfig(YamlConfig):
    """Micro-batching: the queries of requests that arrive while a search runs share the next search call."""

    enabled: bool = True
    max_batch_size: int = Field(256, ge=1, description="queries per search call; larger requests are split")
    max_wait_ms: float = Field(0.0, ge=0, description="extra wait for company before a call (0: none; requests "
                               "queue up anyway while the previous call runs)")
    gather_ms: float = Field(3.0, ge=0, description="how long a freed search stream waits for the clients it just "
                             "answered to send their next query (closed-loop clients come back within a "
                             "millisecond or two); never waits for a lone client; 0: off")


class ReloadConfig(YamlConfig):
    """Serve the new state after `embedkit index add/remove/compact` swaps an index folder."""

    enabled: bool = True
    poll_seconds: float = Field(1.0, gt=0, description="how often manifest.json is checked (one stat call)")


class ServerConfig(YamlConfig):
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
    reload: ReloadConfig = ReloadConfig()
    backend: Backend = Field("faiss", description="dense search: faiss (CPU), faiss-gpu (float16, sharded over "
                             "the visible GPUs), torch (exact, fp16 on GPU)")
    mmap: bool = Field(False, description="memory-map the FAISS file instead of reading it into RAM")
    device: str = "auto"
    encoder_backend: EncoderBackend = Field("torch", description="what runs the query encoder: torch, or onnx "
                                            "(ONNX Runtime on the CPU: exported once and cached, same vectors, "
                                            "about 2x faster one query at a time, and no GIL while encoding)")
    encode_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    search_streams: int | None = Field(None, ge=1, description="dense searches that run at once, each on its own "
                                       "thread (default: min(4, CPUs) when encoding on the CPU, else 1)")
    torch_threads: int | None = Field(None, ge=1, description="torch and FAISS threads per search call (default: "
                                      "CPUs / calls running, so a call alone gets every core)")
    switch_interval_ms: float | None = Field(1.0, gt=0, description="Python's GIL switch interval while serving "
                                             "(default 1 ms instead of 5: the encoder threads get the GIL back "
                                             "sooner while the event loop is busy); null: leave Python's")

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None

    def open_options(self, slot: Slot) -> dict[str, Any]:
        """What `Index.load` gets for the index served in `slot`.

        Both slots get the encoder runtime (device, batch size), which a BM25 index accepts and ignores; only the
        dense slot gets the search settings, because a BM25 index refuses them (it has no FAISS file or backend).
        """
        options: dict[str, Any] = {"device": self.device, "batch_size": self.encode_batch_size}
        if slot == "dense":
            # faiss-gpu opens the FAISS file on the CPU; the server then clones it onto the GPUs.
            options.update(backend="faiss" if self.backend == "faiss-gpu" else self.backend, mmap=self.mmap,
                           encoder_backend=self.encoder_backend)
        return options

    def check_dense_settings(self, slots: dict[str, str]) -> None:
        """Refuse dense-only settings set to something other than their default (in the YAML, by --set or a flag)
        when `slots` (slot -> folder) has no dense index: served as given they would silently do nothing. A default
        written out (`backend: faiss` in configs/serve.yaml) changes nothing, so it passes."""
        if "dense" in slots:
            return
        fields = type(self).model_fields
        chosen = [name for name in DENSE_SETTINGS if getattr(self, name) != fields[name].default]
        if chosen:
            from embedkit.errors import EmbedkitError

            given = ", ".join(f"{name}={getattr(self, name)}" for name in chosen)
            raise EmbedkitError(f"{given}: only a dense index takes {'this setting' if len(chosen) == 1 else 'these'}"
                                f", and this server has none ({slots.get('bm25')} is a BM25 index); drop "
                                f"{' '.join('--' + name.replace('_', '-') for name in chosen)} (or the key in "
                                "the config), or serve a dense index too")


def index_slot(kind: str) -> Slot:
    """The server serves one lexical and one vector index: BM25 is "bm25", every other kind answers as "dense"."""
    return "bm25" if kind == "bm25" else "dense"
