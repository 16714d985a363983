"""Refresh a dense index for an updated model: re-encode its stored documents and write a new index."""

from __future__ import annotations

from pathlib import Path

from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.errors import EmbedkitError, IndexFormatError


def reencode_index(
    index_path: str | Path,
    model: str,
    *,
    out: str | Path | None = None,
    factory: str | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
    max_length: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Re-encode every live document of a dense index with `model`; returns the new index folder.

    Without `out` the index is replaced atomically. Prefixes, normalization, max length, metric and factory
    default to the old index's, and the old history is kept with a `reencode` entry appended.
    """
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index.base import Index
    from embedkit.index.dense import build_dense_index
    from embedkit.index.manifest import DenseManifest, HistoryEntry, IndexManifest

    index_path = Path(index_path)
    index = Index.load(index_path)
    manifest = index.manifest
    if not isinstance(manifest, DenseManifest) or manifest.encoder is None:
        raise IndexFormatError(f"{index_path} is a {manifest.kind} index; only dense indexes can be re-encoded")
    spec = manifest.encoder
    target = Path(out) if out else index_path
    if out and target.exists() and not overwrite:
        raise EmbedkitError(f"{target} exists; pass --overwrite to replace it")
    config = EncoderConfig(
        model=model,
        query_prefix=spec.query_prefix if query_prefix is None else query_prefix,
        passage_prefix=spec.passage_prefix if passage_prefix is None else passage_prefix,
        normalize=spec.normalize,
        max_length=max_length if max_length is not None else spec.max_length,
        batch_size=batch_size,
        device=device,
    )
    encoder = Encoder(config)
    documents = [doc for _, doc in index.docstore.iter_documents()]
    if not documents:
        raise EmbedkitError(f"{index_path} has no documents to re-encode")
    build_dense_index(
        documents,
        encoder,
        target,
        factory=factory or manifest.index_factory or "Flat",
        metric=manifest.metric or "ip",
        overwrite=True,
        total=len(documents),
        quiet=quiet,
        corpus=manifest.corpus,
    )
    new_manifest = IndexManifest.load(target)
    new_manifest.history = [
        *manifest.history,
        HistoryEntry(action="reencode", documents=len(documents), source=str(index_path),
                     previous_model=spec.model, model=encoder.spec.model),
    ]
    new_manifest.save(target)
    return target
