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

__all__ = [
    "FUSION_METHODS",
    "FusionConfig",
    "HybridSearcher",
    "fuse_hits",
    "fuse_runs",
    "fuse_scores",
    "register_fusion",
]


def __getattr__(name: str):
    # Lazy: the searcher pulls in the index package, which `embedkit fuse` (runs only) never needs.
    if name == "HybridSearcher":
        from embedkit.hybrid.searcher import HybridSearcher

        return HybridSearcher
    raise AttributeError(f"module 'embedkit.hybrid' has no attribute {name!r}")
