"""The retrieval service behind the HTTP routes: opened indexes, one micro-batcher per index, fusion.

All searches run on one worker thread, so the encoder and the JVM are never used from two threads at once
(Hugging Face fast tokenizers refuse concurrent use) and the event loop only waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from embedkit.errors import EmbedkitError
from embedkit.hybrid.fusion import FusionConfig, fuse_hits
from embedkit.index.base import Hit, Index
from embedkit.server.batching import MicroBatcher
from embedkit.server.config import Mode, ServerConfig


class RetrievalService:
    """`indexes` maps "dense"/"bm25" to an opened index (tests pass their own; `from_config` opens folders)."""

    def __init__(self, config: ServerConfig, indexes: dict[str, Index]) -> None:
        if not indexes:
            raise EmbedkitError("the server needs at least one index")
        self.config = config
        self.indexes = indexes
        self.modes: list[Mode] = [m for m in ("dense", "bm25") if m in indexes]
        if "dense" in indexes and "bm25" in indexes:
            self.modes.append("hybrid")
        self.default_mode: Mode = config.retrieve_mode or self.modes[0]
        if self.default_mode not in self.modes:
            raise EmbedkitError(f"retrieve mode '{self.default_mode}' needs an index this server was not given "
                                f"(available: {', '.join(self.modes)})")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-search")
        self.batchers = {
            kind: MicroBatcher(self._search_fn(index), self.executor, max_batch_size=config.batching.max_batch_size,
                               max_wait_ms=config.batching.max_wait_ms, enabled=config.batching.enabled)
            for kind, index in indexes.items()
        }

    @classmethod
    def from_config(cls, config: ServerConfig) -> RetrievalService:
        indexes: dict[str, Index] = {}
        for path in (config.index, config.bm25):
            if path is None:
                continue
            index = _open(path, config)
            kind = "bm25" if index.kind == "bm25" else "dense"
            if kind in indexes:
                raise EmbedkitError(f"two {kind} indexes given ({indexes[kind].path} and {path}); give one of each")
            indexes[kind] = index
        return cls(config, indexes)

    @staticmethod
    def _search_fn(index: Index):
        def search(texts: list[str], k: int) -> list[list[Hit]]:
            return index.search(texts, min(k, max(len(index), 1)))

        return search

    async def start(self) -> None:
        if self.config.torch_threads is not None:
            import torch

            torch.set_num_threads(self.config.torch_threads)
            # OpenMP settings are per thread: apply it where the searches run too.
            await asyncio.get_running_loop().run_in_executor(self.executor, torch.set_num_threads,
                                                             self.config.torch_threads)
        for batcher in self.batchers.values():
            await batcher.start()
        # Load the model / start the JVM now, not on the first user request.
        for index in self.indexes.values():
            await asyncio.get_running_loop().run_in_executor(self.executor, index.search, ["warm up"], 1)

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def search(self, queries: Sequence[str], k: int, mode: Mode | None = None,
                     fusion: FusionConfig | None = None) -> list[list[Hit]]:
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise EmbedkitError(f"mode '{mode}' is not available on this server (available: {', '.join(self.modes)})")
        if mode != "hybrid":
            return await self.batchers[mode].submit(queries, k)
        depth = max(k, self.config.hybrid_depth)
        dense, bm25 = await asyncio.gather(self.batchers["dense"].submit(queries, depth),
                                           self.batchers["bm25"].submit(queries, depth))
        config = fusion or self.config.fusion
        return [fuse_hits([d, b], config, k) for d, b in zip(dense, bm25, strict=True)]

    def info(self) -> dict[str, Any]:
        from embedkit import __version__

        return {
            "embedkit_version": __version__,
            "modes": self.modes,
            "retrieve_mode": self.default_mode,
            "indexes": {kind: {"path": str(index.path), "manifest": index.manifest.model_dump(mode="json")}
                        for kind, index in self.indexes.items()},
            "limits": self.config.limits.model_dump(),
            "default_topk": self.config.default_topk,
            "fusion": self.config.fusion.model_dump(mode="json"),
            "batching": {**self.config.batching.model_dump(),
                         "stats": {kind: b.stats.as_dict() for kind, b in self.batchers.items()}},
            "auth": self.config.resolved_api_key() is not None,
        }


def _open(path: str, config: ServerConfig) -> Index:
    from embedkit.index.manifest import IndexManifest

    if IndexManifest.load(path).kind == "dense":
        return Index.load(path, device=config.device, batch_size=config.encode_batch_size)
    return Index.load(path)
