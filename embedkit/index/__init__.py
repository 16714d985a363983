"""Index folders: build, load and search. See `embedkit.index.dense` (FAISS) and `embedkit.lexical` (BM25).

Every kind is registered in `embedkit.index.kinds.INDEX_KINDS`; `Index.load(path)` opens any of them.
Heavy modules (FAISS, encoders) are imported on first use of the names below.
"""

from __future__ import annotations

from typing import Any

from embedkit.index.base import Hit, Index
from embedkit.index.docstore import DocStore
from embedkit.index.kinds import INDEX_KINDS, IndexKind, VerifyReport, kind_of, open_index, verify_index
from embedkit.index.manifest import BM25Manifest, DenseManifest, HistoryEntry, IndexManifest

__all__ = [
    "BM25Manifest",
    "INDEX_KINDS",
    "DenseIndex",
    "DenseManifest",
    "DocStore",
    "HistoryEntry",
    "Hit",
    "Index",
    "IndexKind",
    "IndexManifest",
    "VerifyReport",
    "build_dense_index",
    "kind_of",
    "open_index",
    "verify_index",
    "write_dense_index",
]

_LAZY = {"DenseIndex", "build_dense_index", "write_dense_index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import embedkit.index.dense as dense_module

        return getattr(dense_module, name)
    raise AttributeError(f"module 'embedkit.index' has no attribute {name!r}")
