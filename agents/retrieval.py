"""The `Retriever` protocol agents search through, and its in-process implementation.

Agent code depends only on the protocol, so the same loop runs over an index opened in this process
(`IndexRetriever`) or over a retrieval server speaking Search-R1's `POST /retrieve` (`HttpRetriever`,
in `agents.http_retriever`).

    retriever = IndexRetriever.from_path("indexes/hotpotqa")
    passages = retriever.retrieve(["who wrote Hamlet?"], k=3)[0]
    print(passages[0].title, passages[0].score)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    title: str
    text: str
    score: float

    @property
    def contents(self) -> str:
        """Search-R1's `contents` field: title and text on separate lines."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """Top-k passages for each query, best first."""
        ...


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
        return [[Passage(id=h.id, title=h.title, text=h.text, score=h.score) for h in hits] for hits in results]
