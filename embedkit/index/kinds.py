"""The registry of index kinds: how each kind is built, opened, updated and verified, with typed options.

    from embedkit.index.kinds import INDEX_KINDS, kind_of
    kind = INDEX_KINDS.get("bm25")                          # imported on first use
    options = kind.build_options.model_validate({"k1": 1.2})
    kind.build(documents, "indexes/bm25", options, corpus="corpus.jsonl")
    kind_of("indexes/bm25").verify(Path("indexes/bm25"))    # the kind a folder's manifest names

Built-in kinds are lazy `"module:attr"` entries, so listing them imports neither FAISS nor pyserini. A new
kind subclasses `IndexKind` and is added with `INDEX_KINDS.add(name, instance or "module:attr")`; its manifest
model must be one of `embedkit.index.manifest.AnyManifest`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index.manifest import IndexManifest
from embedkit.registry import Registry

if TYPE_CHECKING:
    from embedkit.data.corpus import Document
    from embedkit.index.base import Index


@dataclass
class VerifyReport:
    """What `IndexKind.verify` checked; `unchecked` lists files without a recorded checksum (old manifests)."""

    path: Path
    kind: str
    num_docs: int
    files: int
    unchecked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: OK — {self.kind} index, {self.num_docs} documents, {self.files} files checked"
        if self.unchecked:
            text += (f"; {len(self.unchecked)} file(s) have no recorded checksum (written by an older embedkit; "
                     "sizes checked only): " + ", ".join(self.unchecked))
        return text + "".join(f"\n  {note}" for note in self.notes)


def parse_options(model: type[BaseModel], options: Mapping[str, Any], what: str) -> BaseModel:
    """Validate keyword options into `model`, turning pydantic's report into one EmbedkitError line."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"]) or "options"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {'not an option of this kind' if item['type'] == 'extra_forbidden' else message}")
        raise EmbedkitError(f"bad {what}: {'; '.join(problems)}") from None


ManifestT = TypeVar("ManifestT", bound=IndexManifest)
BuildOptionsT = TypeVar("BuildOptionsT", bound=BaseModel)
OpenOptionsT = TypeVar("OpenOptionsT", bound=BaseModel)


class IndexKind(ABC, Generic[ManifestT, BuildOptionsT, OpenOptionsT]):
    """One kind of index folder. Instances are registered in `INDEX_KINDS`.

    Parameterized by its manifest model and its build and open option models, so a kind's methods take
    its own types (`DenseKind(IndexKind[DenseManifest, DenseBuildOptions, DenseOpenOptions])`).
    """

    name: ClassVar[str]
    manifest_model: ClassVar[type[IndexManifest]]
    build_options: ClassVar[type[BaseModel]]
    open_options: ClassVar[type[BaseModel]]

    @abstractmethod
    def build(self, documents: Iterable[Document], out: str | Path, options: BuildOptionsT, *, overwrite: bool = False,
              corpus: str | None = None, total: int | None = None, quiet: bool = False) -> Path:
        """Write a new index folder at `out` atomically."""

    @abstractmethod
    def open(self, path: Path, manifest: ManifestT, options: OpenOptionsT) -> Index:
        """Open a folder whose manifest was validated and whose cheap checks passed."""

    def add(self, path: Path, documents: Iterable[Document], *, source: str | None = None, quiet: bool = True,
            **runtime: Any) -> Any:
        """Insert or replace documents (upsert). Kinds that cannot update in place say so."""
        raise EmbedkitError(f"{path} is a {self.name} index, which cannot be updated in place; rebuild it with "
                            f"`embedkit index build --kind {self.name} --overwrite`")

    def remove(self, path: Path, ids: Iterable[str], *, source: str | None = None) -> Any:
        raise EmbedkitError(f"{path} is a {self.name} index, which cannot be updated in place; rebuild it with "
                            f"`embedkit index build --kind {self.name} --overwrite`")

    def compact(self, path: Path) -> Any:
        """Merge an updated index's segments and drop deleted documents (`embedkit index compact`)."""
        raise EmbedkitError(f"{path} is a {self.name} index, which `embedkit index compact` cannot compact")

    def check(self, path: Path, manifest: IndexManifest) -> None:
        """Cheap checks run on every open: recorded files present with their sizes, document count."""
        check_folder(path, manifest)

    def verify(self, path: Path, manifest: ManifestT | None = None) -> VerifyReport:
        """Full check: every file's SHA-256 against the manifest, and the counts. Raises IndexFormatError."""
        return verify_folder(path, manifest or IndexManifest.load(path))


def check_folder(path: Path, manifest: IndexManifest) -> None:
    """The cheap checks of any kind: recorded files present with their sizes; document store count."""
    manifest.check_files(path)
    count = _docstore_count(path)
    if count != manifest.num_docs:
        raise IndexFormatError(
            f"index {path} is damaged: its document store holds {count} documents, the manifest says "
            f"{manifest.num_docs} (a row was deleted or the manifest edited); rebuild the index"
        )


def verify_folder(path: Path, manifest: IndexManifest, *, next_row: int | None = None) -> VerifyReport:
    """The full checks of any kind: every recorded file's SHA-256, then `check_folder`, then every document
    store value's type (and, with `next_row`, that every row is below it)."""
    from embedkit.index.docstore import DOCSTORE_NAME, DocStore

    unchecked = manifest.verify_checksums(path)
    check_folder(path, manifest)
    store = DocStore(path / DOCSTORE_NAME)
    try:
        store.check_contents(next_row)
    finally:
        store.close()
    links = manifest.external_links()
    report = VerifyReport(path=path, kind=manifest.kind, num_docs=manifest.num_docs, files=len(manifest.files),
                          unchecked=[name for name in unchecked if name not in links])
    report.notes += [f"{name} links to {os.path.realpath(path / name)} (made by `embedkit index import --link`; its "
                     "size is checked, not its checksum)" for name in unchecked if name in links]
    return report


def _docstore_count(path: Path) -> int:
    from embedkit.index.docstore import DOCSTORE_NAME, DocStore

    store = DocStore(path / DOCSTORE_NAME)
    try:
        return len(store)
    finally:
        store.close()


INDEX_KINDS: Registry[IndexKind[Any, Any, Any]] = Registry("index kind")
INDEX_KINDS.add("dense", "embedkit.index.dense_kind:DENSE_KIND")
INDEX_KINDS.add("bm25", "embedkit.lexical.index:BM25_KIND")


def kind_of(path: str | Path) -> IndexKind:
    """The registered kind of the index folder at `path` (from its manifest)."""
    return INDEX_KINDS.get(IndexManifest.load(path).kind)


def open_index(path: str | Path, *, prepare: Callable[[Index], None] | None = None, **options: Any) -> Index:
    """Open any kind of index folder: manifest → registered kind → typed options → cheap checks → open.

    Every file a search reads is opened here, all from one state of the folder even while an update swaps it
    (`embedkit.index.consistent`), so the index never mixes two states. `prepare(index)` runs before its files
    are opened (a server hands over the unchanged segments of the state it serves: `embedkit.index.reopen`).
    """
    from embedkit.index.consistent import read_consistent

    path = Path(path)

    def read() -> Index:
        manifest = IndexManifest.load(path)
        kind = INDEX_KINDS.get(manifest.kind)
        parsed = parse_options(kind.open_options, options, f"options for a {kind.name} index ({path})")
        kind.check(path, manifest)
        index = kind.open(path, manifest, parsed)
        if prepare is not None:
            prepare(index)
        index.open_files()
        return index

    return read_consistent(path, read)


def build_index(kind: str, documents: Iterable[Document], out: str | Path, options: Mapping[str, Any] | BaseModel,
                **build_args: Any) -> Path:
    """Build an index of the registered `kind`; `options` are validated by the kind's options model."""
    index_kind = INDEX_KINDS.get(kind)
    if not isinstance(options, BaseModel):
        options = parse_options(index_kind.build_options, options, f"{kind} build options")
    return index_kind.build(documents, out, options, **build_args)


def verify_index(path: str | Path) -> VerifyReport:
    """Check every byte and count of an index folder (`embedkit index verify`)."""
    path = Path(path)
    manifest = IndexManifest.load(path)
    return INDEX_KINDS.get(manifest.kind).verify(path, manifest)


def check_document_ids(ids: Sequence[str], *, source: str | None = None, start: int = 0) -> None:
    """Refuse ids that TREC run files cannot hold: empty, or containing whitespace (a column separator).

    `start` is the number of documents before `ids` in the corpus, so the error can say which document it is.
    """
    from embedkit.errors import DataFormatError

    for position, doc_id in enumerate(ids, start=start + 1):
        if not doc_id or any(ch.isspace() for ch in doc_id):
            what = "is empty" if not doc_id else f"contains whitespace ({_first_space(doc_id)})"
            raise DataFormatError(
                f"document #{position}: id {doc_id!r} {what}; ids must be non-empty and without spaces, tabs or "
                "newlines, because TREC run files separate columns by whitespace (fix the ids, e.g. replace "
                "spaces by '_')",
                path=source,
            )


def _first_space(text: str) -> str:
    names = {" ": "a space", "\t": "a tab", "\n": "a newline", "\r": "a carriage return"}
    ch = next(ch for ch in text if ch.isspace())
    return names.get(ch, f"U+{ord(ch):04X}")
