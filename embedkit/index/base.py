"""The `Index` interface every index kind implements. Kinds are looked up in `embedkit.index.kinds.INDEX_KINDS`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from embedkit.data.runs import Run
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.kinds import open_index
from embedkit.index.manifest import IndexManifest
from embedkit.passage import Passage

#: What a search returns: `embedkit.passage.Passage` (id, title, text, score, rank). `Hit` is kept as its alias.
Hit = Passage


def check_k(k: int) -> int:
    """Refuse a result depth below 1 (a search for 0 or -1 hits is a mistake, not a request for one hit)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EmbedkitError(f"k (hits per query) must be a whole number of at least 1, got {k!r}")
    return k


class Index(ABC):
    """A searchable index folder.

    With an index built earlier (needs an index folder and its model, so not run here):

    >>> index = Index.load("indexes/scifact")  # doctest: +SKIP
    >>> [hit.id for hit in index.search("microRNA in cancer", k=3)[0]]  # doctest: +SKIP
    ['...', '...', '...']
    """

    kind: ClassVar[str] = ""
    #: keyword parameters `search` accepts besides k and with_text (e.g. nprobe, ef_search for dense).
    search_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, path: Path, manifest: IndexManifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> Index:
        """Open any kind of index folder through the kind registry; `options` are checked by the kind."""
        index = open_index(path, **options)
        if cls is not Index and not isinstance(index, cls):
            raise IndexFormatError(f"{path} is a {index.kind} index, not a {cls.kind or cls.__name__} index")
        return index

    @cached_property
    def docstore(self) -> DocStore:
        return DocStore(self.path / DOCSTORE_NAME)

    def open_files(self) -> None:
        """Open now every file a search reads (`Index.load` does, so they all come from one folder state).

        Kinds that read more than the document store extend this.
        """
        _ = self.docstore

    def __len__(self) -> int:
        return self.manifest.num_docs

    def check_search_options(self, params: Mapping[str, Any]) -> None:
        unknown = sorted(name for name, value in params.items() if value is not None and name not in self.search_options)
        if unknown:
            allowed = ", ".join(sorted(self.search_options)) or "none"
            raise EmbedkitError(f"{', '.join(unknown)} do(es) not apply to {self.kind} index {self.path} "
                                f"(its search options: {allowed})")

    @abstractmethod
    def search(self, queries: str | Sequence[str], k: int = 10, **params: Any) -> list[list[Passage]]:
        """Top-k hits for each query, best first."""

    def search_run(self, queries: Mapping[str, str], k: int = 1000, *, batch_size: int = 256, **params: Any) -> Run:
        """Search many queries and return a run {query id: {doc id: score}} for evaluation."""
        run: Run = {}
        ids, texts = list(queries), list(queries.values())
        for start in range(0, len(ids), batch_size):
            results = self.search(texts[start : start + batch_size], k, with_text=False, **params)
            for query_id, hits in zip(ids[start : start + batch_size], results, strict=True):
                run[query_id] = {hit.id: hit.score for hit in hits}
        return run
