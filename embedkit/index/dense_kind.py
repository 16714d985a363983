"""The dense index kind in the registry: built by `embedkit.index.dense`, updated by `embedkit.index.lifecycle`.

Kept apart from both so neither imports the other's caller (no import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embedkit.data.corpus import Document
from embedkit.index.dense import (
    DenseBuildOptions,
    DenseIndex,
    DenseOpenOptions,
    build_dense_index,
    verify_dense,
)
from embedkit.index.faiss_ops import check_factory
from embedkit.index.kinds import IndexKind, VerifyReport
from embedkit.index.lifecycle import UpdateReport, add_documents, remove_documents
from embedkit.index.manifest import DenseManifest, IndexManifest


class DenseKind(IndexKind[DenseManifest, DenseBuildOptions, DenseOpenOptions]):
    """FAISS index + document store + encoder spec. Updatable in place (`embedkit.index.lifecycle`)."""

    name = "dense"
    manifest_model = DenseManifest
    build_options = DenseBuildOptions
    open_options = DenseOpenOptions

    def build(self, documents: Iterable[Document], out: str | Path, options: DenseBuildOptions, *,
              overwrite: bool = False, corpus: str | None = None, total: int | None = None,
              quiet: bool = False) -> Path:
        from embedkit.encoding.encoder import Encoder

        check_factory(options.factory)  # before loading the model
        return build_dense_index(documents, Encoder(options.encoder), out, factory=options.factory,
                                 metric=options.metric, train_sample=options.train_sample, overwrite=overwrite,
                                 total=total, quiet=quiet, corpus=corpus, store_vectors=options.store_vectors,
                                 on_disk=options.on_disk)

    def open(self, path: Path, manifest: DenseManifest, options: DenseOpenOptions) -> DenseIndex:
        return DenseIndex(path, manifest, **dict(options))

    def add(self, path: Path, documents: Iterable[Document], *, source: str | None = None, quiet: bool = True,
            **runtime: Any) -> UpdateReport:
        return add_documents(path, documents, source=source, quiet=quiet, **runtime)

    def remove(self, path: Path, ids: Iterable[str], *, source: str | None = None) -> UpdateReport:
        return remove_documents(path, ids, source=source)

    def check(self, path: Path, manifest: IndexManifest) -> None:
        """Sizes of every file; a segmented folder's document counts are checked as its segments open."""
        if isinstance(manifest, DenseManifest) and manifest.segments:
            manifest.check_files(path)
        else:
            super().check(path, manifest)

    def verify(self, path: Path, manifest: DenseManifest | None = None) -> VerifyReport:
        return verify_dense(path, manifest or DenseManifest.load(path))


DENSE_KIND = DenseKind()
