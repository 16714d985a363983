"""The `Retriever` protocol agents search through, and its in-process implementation.

Agent code depends only on the protocol, so the same loop runs over an index opened in this process
(`IndexRetriever`) or over a retrieval server speaking Search-R1's `POST /retrieve` (`HttpRetriever`,
in `agents.http_retriever`). Both hand the agent `embedkit.passage.Passage` objects built by
`passage_from_contents`, so a passage reaches the model in one form whichever way it was retrieved.

    retriever = IndexRetriever.from_path("indexes/hotpotqa")
    passages = retriever.retrieve(["who wrote Hamlet?"], k=3)[0]
    print(passages[0].title, passages[0].score)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from embedkit.passage import Passage

__all__ = ["IndexRetriever", "Passage", "Retriever", "passage_from_contents"]


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """Top-k passages for each query, best first."""
        ...


def passage_from_contents(id: str, contents: str, *, score: float = 0.0, rank: int = 0) -> Passage:
    """The one way agents turn a retrieved document into a `Passage`: Search-R1's reading of `contents`.

    The first line is the title (quotes around it removed), the rest the text; a document without a newline
    has no title. A stored document with a title has `contents` "title\\ntext" and round-trips unchanged; a
    wiki-18 style document stored with only `contents` gets its title from its first line, as Search-R1's
    client does, so `IndexRetriever` and `HttpRetriever` render it identically.
    """
    return Passage.from_contents(str(id), contents, score=float(score), rank=rank)


class IndexRetriever:
    """A `Retriever` over an embedkit index opened in this process (dense, BM25 or any registered kind)."""

    def __init__(self, index: Any, **search_params: Any) -> None:
        self.index = index
        self.search_params = search_params

    @classmethod
    def from_path(cls, path: str | Path, **open_options: Any) -> IndexRetriever:
        from embedkit.index import Index

        return cls(Index.load(path, **open_options))

    def retrieve(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        results = self.index.search(list(queries), k, **self.search_params)
        return [[passage_from_contents(h.id, _contents(h), score=h.score, rank=rank)
                 for rank, h in enumerate(hits, start=1)] for hits in results]  # fmt: skip


def _contents(hit: Any) -> str:
    # The server answers /retrieve with exactly this string, so both retrievers parse the same text.
    title, text = getattr(hit, "title", "") or "", getattr(hit, "text", "") or ""
    return f"{title}\n{text}" if title else text
