"""The BM25 backend registry. A backend writes its files into an index folder, updates and searches them.

Both built-in backends (`pyserini`, `bm25s`) register here; `resolve_backend("auto")` picks pyserini when
a Java 21+ runtime exists and bm25s otherwise.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from embedkit.errors import EmbedkitError
from embedkit.registry import Registry

if TYPE_CHECKING:  # annotations only: `embedkit --help` lists BACKENDS without importing pydantic models
    from embedkit.data.corpus import Document
    from embedkit.index.docstore import DocStore
    from embedkit.lexical.segments import BM25Segment
    from embedkit.lexical.settings import BM25Settings

log = logging.getLogger(__name__)

# (doc id, score) per query, best first
ScoredIds = list[list[tuple[str, float]]]


class LexicalBuilder(ABC):
    """Receives the corpus in chunks while the document store is written, then writes the index files."""

    @abstractmethod
    def add(self, documents: Sequence[Document]) -> None: ...

    @abstractmethod
    def finish(self) -> dict:
        """Write the index; returns facts worth recording in the manifest (library versions, …)."""

    def segments(self) -> list[BM25Segment]:
        """The segments `finish` wrote (recorded in the manifest)."""
        return []


class LexicalUpdater(ABC):
    """Changes a copy of an index folder's backend files (`embedkit.lexical.update` makes the copy and swaps it in).

    `remove` gets the ids and document-store rows of removed and replaced documents, `add` the documents added
    and their new rows, in the order they happen; `finish` writes and returns the segments now recorded.
    """

    @abstractmethod
    def add(self, documents: Sequence[Document], rows: Sequence[int]) -> None: ...

    @abstractmethod
    def remove(self, ids: Sequence[str], rows: Sequence[int]) -> None: ...

    @abstractmethod
    def finish(self) -> list[BM25Segment]: ...


class LexicalSearcher(ABC):
    @abstractmethod
    def search(self, queries: Sequence[str], k: int, *, k1: float | None = None, b: float | None = None) -> ScoredIds:
        """Top-k (doc id, score) per query; queries with no indexed term get no hits."""


class LexicalBackend(ABC):
    name: ClassVar[str]
    folder: ClassVar[str]  # subfolder of the index folder holding the backend's files
    renumbers_rows: ClassVar[bool] = False  # whether `compact` numbers the live documents 0, 1, … anew

    @abstractmethod
    def builder(self, folder: Path, settings: BM25Settings) -> LexicalBuilder: ...

    @abstractmethod
    def open(self, folder: Path, settings: BM25Settings, *, ids: Callable[[], dict[int, str]],
             segments: Sequence[BM25Segment] = ()) -> LexicalSearcher:
        """Open the files under `folder`; `ids()` maps the document store's rows to ids (for backends storing
        rows); `segments` are the manifest's."""

    @abstractmethod
    def updater(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment]) -> LexicalUpdater:
        """An updater of the (copied) index folder `root` whose manifest records `segments`."""

    @abstractmethod
    def compact(self, root: Path, settings: BM25Settings, segments: Sequence[BM25Segment],
                live: DocStore) -> list[BM25Segment]:
        """Merge the segments of the (copied) index folder `root` into one without deleted documents; `live`
        reads the live documents by row. Returns the segments now recorded. The update then writes the document
        store again: rows renumbered 0, 1, … in row order where `renumbers_rows`, else as they were."""


# Lazy entries: pyserini is heavy and needs a JVM, so a backend's module is imported only when it is used.
BACKENDS: Registry[type[LexicalBackend]] = Registry("BM25 backend")
BACKENDS.add("pyserini", "embedkit.lexical.pyserini_backend:Backend")
BACKENDS.add("bm25s", "embedkit.lexical.bm25s_backend:Backend")


def get_backend(name: str) -> LexicalBackend:
    return BACKENDS.get(name)()


def resolve_backend(name: str) -> str:
    """`auto` → pyserini when Java 21+ is installed, else bm25s; an explicit name is checked."""
    from embedkit.lexical.java import java_available

    if name == "auto":
        chosen = "pyserini" if java_available() and _pyserini_installed() else "bm25s"
        log.info("BM25 backend: %s", chosen)
        return chosen
    if name == "pyserini" and not _pyserini_installed():
        raise EmbedkitError("the pyserini backend needs pyserini: pip install 'embedkit[lexical]' "
                            "(or use --backend bm25s)")
    if name not in BACKENDS:
        raise EmbedkitError(f"unknown BM25 backend '{name}'; choose one of: auto, {', '.join(BACKENDS.names())}")
    return name


def _pyserini_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyserini") is not None
