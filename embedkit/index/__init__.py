"""Index folders: build, load and search. See `embedkit.index.dense` for the FAISS kind."""

from embedkit.index.base import INDEX_KINDS, Hit, Index, register_index_kind
from embedkit.index.dense import DenseIndex, build_dense_index, write_dense_index
from embedkit.index.docstore import DocStore
from embedkit.index.manifest import HistoryEntry, IndexManifest

__all__ = [
    "INDEX_KINDS",
    "DenseIndex",
    "DocStore",
    "HistoryEntry",
    "Hit",
    "Index",
    "IndexManifest",
    "build_dense_index",
    "register_index_kind",
    "write_dense_index",
]
