"""The `Index` interface every index kind implements, and the registry that maps kinds to classes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from embedkit.data.runs import Run
from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.manifest import IndexManifest


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    rank: int
    title: str = ""
    text: str = ""

    def contents(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


INDEX_KINDS: dict[str, type[Index]] = {}


def register_index_kind(kind: str) -> Callable[[type[Index]], type[Index]]:
    """Class decorator: `Index.load` opens folders whose manifest says `kind` with this class."""

    def decorate(cls: type[Index]) -> type[Index]:
        cls.kind = kind
        INDEX_KINDS[kind] = cls
        return cls

    return decorate


def _import_builtin_kinds() -> None:
    import embedkit.index.dense  # noqa: F401

    try:
        import embedkit.lexical.index  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "embedkit.lexical.index" and error.name != "embedkit.lexical":
            raise


class Index(ABC):
    """A searchable index folder.

    >>> index = Index.load("indexes/scifact")
    >>> [hit.id for hit in index.search("microRNA in cancer", k=3)[0]]
    ['…', '…', '…']
    """

    kind: ClassVar[str] = ""

    def __init__(self, path: Path, manifest: IndexManifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> Index:
        path = Path(path)
        manifest = IndexManifest.load(path)
        _import_builtin_kinds()
        kind_class = INDEX_KINDS.get(manifest.kind)
        if kind_class is None:
            raise IndexFormatError(f"{path}: unknown index kind '{manifest.kind}' (known: {', '.join(sorted(INDEX_KINDS))})")
        if cls is not Index and not issubclass(kind_class, cls):
            raise IndexFormatError(f"{path} is a {manifest.kind} index, not a {cls.kind or cls.__name__} index")
        manifest.check_files(path)
        return kind_class.open(path, manifest, **options)

    @classmethod
    @abstractmethod
    def open(cls, path: Path, manifest: IndexManifest, **options: Any) -> Index:
        """Open an index folder whose manifest was already validated."""

    @cached_property
    def docstore(self) -> DocStore:
        return DocStore(self.path / DOCSTORE_NAME)

    def __len__(self) -> int:
        return self.manifest.num_docs

    @abstractmethod
    def search(self, queries: str | Sequence[str], k: int = 10, **params: Any) -> list[list[Hit]]:
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
