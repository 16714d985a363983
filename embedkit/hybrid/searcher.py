"""Search several live indexes and fuse their rankings per query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from embedkit.data.runs import Run
from embedkit.errors import EmbedkitError
from embedkit.hybrid.fusion import FusionConfig, fuse_hits
from embedkit.index.base import Index
from embedkit.passage import Passage


class HybridSearcher:
    """Fuses the top hits of each index (e.g. dense + BM25). `params[i]` are extra search options of index i.

    Each index is searched `max(k, config.depth)` deep, so fusion sees documents beyond the final k.
    """

    def __init__(self, indexes: Sequence[Index], config: FusionConfig | None = None,
                 params: Sequence[Mapping[str, Any]] | None = None) -> None:
        if len(indexes) < 2:
            raise EmbedkitError("hybrid search needs at least two indexes")
        self.indexes = list(indexes)
        self.config = config or FusionConfig()
        self.params = [dict(p) for p in params] if params is not None else [{} for _ in indexes]
        if len(self.params) != len(self.indexes):
            raise EmbedkitError("one parameter set per index")
        self.config.weights_for(len(self.indexes))  # refuse bad weights before searching

    def search(self, queries: str | Sequence[str], k: int = 10, *, with_text: bool = True,
               depth: int | None = None) -> list[list[Passage]]:
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            return []
        depth = max(k, depth if depth is not None else self.config.depth)
        per_index = [index.search(texts, depth, with_text=with_text, **params)
                     for index, params in zip(self.indexes, self.params, strict=True)]
        return [fuse_hits([results[i] for results in per_index], self.config, k) for i in range(len(texts))]

    def search_run(self, queries: Mapping[str, str], k: int = 1000, *, batch_size: int = 256) -> Run:
        run: Run = {}
        ids, texts = list(queries), list(queries.values())
        for start in range(0, len(ids), batch_size):
            results = self.search(texts[start:start + batch_size], k, with_text=False)
            for query_id, hits in zip(ids[start:start + batch_size], results, strict=True):
                run[query_id] = {hit.id: hit.score for hit in hits}
        return run
