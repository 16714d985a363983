"""Hybrid retrieval: fuse the rankings of several runs or live indexes (dense + BM25 usually beats both).

    from embedkit.hybrid import FusionConfig, fuse_runs, HybridSearcher
    fused = fuse_runs([dense_run, bm25_run], FusionConfig(method="rrf"))          # runs → run
    searcher = HybridSearcher([Index.load("indexes/dense"), Index.load("indexes/bm25")],
                              FusionConfig(method="interpolate", alpha=0.6))
    hits = searcher.search(["a query"], k=10)[0]
"""

from embedkit.hybrid.fusion import (
    FUSION_METHODS,
    FusionConfig,
    fuse_hits,
    fuse_runs,
    fuse_scores,
    register_fusion,
)
from embedkit.hybrid.searcher import HybridSearcher

__all__ = [
    "FUSION_METHODS",
    "FusionConfig",
    "HybridSearcher",
    "fuse_hits",
    "fuse_runs",
    "fuse_scores",
    "register_fusion",
]
