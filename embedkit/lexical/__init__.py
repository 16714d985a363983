"""Lexical (BM25) retrieval: Lucene through pyserini, or the embedded bm25s backend (no JVM).

    from embedkit.data import iter_documents
    from embedkit.lexical import BM25Settings, build_bm25_index
    from embedkit.index import Index

    build_bm25_index(iter_documents("corpus.jsonl"), "indexes/bm25", BM25Settings(k1=0.9, b=0.4))
    hits = Index.load("indexes/bm25").search("a query", k=10)[0]

The backend defaults to pyserini when a Java 21+ runtime is found (see `embedkit.lexical.java`) and to
bm25s otherwise. Both score with Lucene's BM25 formula; the settings are recorded in the manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedkit.lexical.index import build_bm25_index
    from embedkit.lexical.settings import BM25Settings, parse_fields

__all__ = ["BM25Settings", "build_bm25_index", "parse_fields"]


def __getattr__(name: str):
    # Lazy: the CLI imports `embedkit.lexical.backends` to list backends; pydantic models, the docstore
    # and the backends load only when used.
    if name in ("BM25Settings", "parse_fields"):
        from embedkit.lexical.settings import BM25Settings, parse_fields

        return BM25Settings if name == "BM25Settings" else parse_fields
    if name == "build_bm25_index":
        from embedkit.lexical.index import build_bm25_index

        return build_bm25_index
    raise AttributeError(name)
