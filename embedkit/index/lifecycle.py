"""Keep a dense index up to date without rebuilding it: add/upsert, remove, compact, merge.

    from embedkit.data import iter_documents
    from embedkit.index.lifecycle import add_documents, remove_documents, compact_index, merge_indexes
    from embedkit.index.manifest import MergePolicy

    add_documents("indexes/mine", iter_documents("new.jsonl"))     # new ids inserted, existing ids replaced
    remove_documents("indexes/mine", ["doc7", "doc9"])
    compact_index("indexes/mine")                                 # one segment, without deleted rows
    set_merge_policy("indexes/mine", MergePolicy(max_segments=8))  # when updates merge segments
    merge_indexes(["shards/", "indexes/other"], "indexes/all")    # encode shards and/or index folders
    reencode_index("indexes/mine", "runs/boom-v2/model")          # re-encode with an updated model

Adds, upserts and removals are committed as new files of a segmented folder (`embedkit.index.segments`): an
add writes a new segment holding only the new documents, a removal a small deletion file for each segment it
touches, and the commit replaces `manifest.json` atomically, under the folder's lock (taken on its real path,
so a symlink and its target share it). A killed update leaves the old state or the new one; two concurrent
updates cannot lose each other's changes. An update checks the sizes of every file and the checksums of the
files it reads whole, so its cost follows the change, not the index (`embedkit index verify` reads every byte).
The merge policy recorded in the manifest (`set_merge_policy`) merges segments after an update when due;
`compact_index`, `merge_indexes` and `reencode_index` write a whole new folder and swap it in
(`embedkit.io.atomic_directory`). Documents are encoded with the encoder recorded in the manifest (same
weights, prefixes, normalization and max length); anything else is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedkit.data.corpus import Document
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding.config import EncoderSpec
from embedkit.errors import EmbedkitError, IndexFormatError, ModelMismatchError
from embedkit.index.dense import DEFAULT_TRAIN_SAMPLE, DenseIndex, _write, verify_dense
from embedkit.index.docstore import DuplicateIdError
from embedkit.index.kinds import check_folder
from embedkit.index.manifest import MANIFEST_NAME, DenseManifest, HistoryEntry, IndexManifest, MergePolicy
from embedkit.index.segments_update import SegmentedUpdate, UpdateReport, check_update_files, segmented_update
from embedkit.io import check_replaceable, folder_lock, real_folder

if TYPE_CHECKING:
    from embedkit.encoding.encoder import Encoder

# Fields of the encoder spec that change the vectors; the model name may differ (a local copy of the same weights).
SPEC_FIELDS = ("fingerprint", "pooling", "normalize", "passage_prefix", "query_prefix", "max_length", "dim")
READ_BATCH = 8192


def check_encoder(spec: EncoderSpec, encoder: Encoder) -> None:
    """Refuse an encoder whose settings would produce vectors unlike the index's."""
    given = encoder.spec
    differing = [name for name in SPEC_FIELDS if getattr(given, name) != getattr(spec, name)]
    if differing:
        details = "; ".join(f"{name}: index {getattr(spec, name)!r}, encoder {getattr(given, name)!r}" for name in differing)
        raise ModelMismatchError(f"the encoder differs from the one the index was built with ({details})")


def encoder_for(path: str | Path, *, encoder: Encoder | None = None, model: str | None = None,
                device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE) -> Encoder:
    """The encoder recorded in an index's manifest (or `encoder`, after checking it matches)."""
    return _encoder_for_spec(_dense_manifest(Path(path)).encoder, encoder=encoder, model=model, device=device,
                             batch_size=batch_size)


def _encoder_for_spec(spec: EncoderSpec, *, encoder: Encoder | None, model: str | None, device: str,
                      batch_size: int) -> Encoder:
    from embedkit.encoding.encoder import Encoder

    if encoder is not None:
        check_encoder(spec, encoder)
        return encoder
    return Encoder.from_spec(spec, model_path=model, device=device, batch_size=batch_size)


def add_documents(path: str | Path, documents: Iterable[Document], *, encoder: Encoder | None = None,
                  model: str | None = None, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                  source: str | None = None, quiet: bool = True) -> UpdateReport:
    """Encode and insert documents; a document whose id is already indexed replaces it (upsert)."""
    with _update(Path(path), "add", source) as update:
        # The encoder comes from the manifest read under the lock: a re-encode that swapped the folder while
        # this add waited changed the model, and vectors of the old one would not match the index's.
        encoder = _encoder_for_spec(update.manifest.encoder, encoder=encoder, model=model, device=device,
                                    batch_size=batch_size)
        for docs, vectors in encoder.iter_encoded(documents, quiet=quiet):
            update.upsert(docs, vectors)
        return update.report


def add_vectors(path: str | Path, documents: Sequence[Document], vectors: np.ndarray, *,
                spec: EncoderSpec | None = None, source: str | None = None) -> UpdateReport:
    """Upsert documents whose vectors were computed elsewhere; `spec` (when given) must match the index's."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(documents):
        raise EmbedkitError(f"{len(vectors)} vectors for {len(documents)} documents")
    with _update(Path(path), "add", source) as update:
        if spec is not None:
            differing = [name for name in SPEC_FIELDS if getattr(spec, name) != getattr(update.manifest.encoder, name)]
            if differing:
                raise ModelMismatchError(f"vectors come from a different encoder (differs in {', '.join(differing)})")
        for start in range(0, len(documents), READ_BATCH):
            update.upsert(list(documents[start : start + READ_BATCH]), vectors[start : start + READ_BATCH])
        return update.report


def remove_documents(path: str | Path, ids: Iterable[str], *, source: str | None = None) -> UpdateReport:
    """Delete documents by id; ids not in the index are reported in `missing`, not an error."""
    with _update(Path(path), "remove", source) as update:
        iterator = iter(ids)
        while batch := list(islice(iterator, READ_BATCH)):
            update.remove(batch)
        return update.report


def set_merge_policy(path: str | Path, policy: MergePolicy) -> UpdateReport:
    """Record when updates merge segments (`MergePolicy.never()`: only `compact_index` does); a merge
    the new policy calls for runs at once. Commits like any update (an old folder is converted)."""
    with _update(Path(path), "merge-policy", None) as update:
        update.manifest = update.manifest.model_copy(update={"merge_policy": policy})
        return update.report


def compact_index(path: str | Path, *, factory: str | None = None, train_sample: int = DEFAULT_TRAIN_SAMPLE,
                  store_vectors: str | None = None) -> UpdateReport:
    """Rebuild the index from its live documents' vectors (no re-encoding): drops masked rows, retrains IVF/PQ.

    `factory` switches the index kind at the same time (e.g. to HNSW32 once the corpus grew).
    """
    path = Path(path)
    with folder_lock(path):
        index = _open_dense(path, verify=True)
        manifest = index.manifest
        _require_vectors(index, "compact")
        chunks = _index_chunks(index)
        mode = store_vectors or (manifest.vectors.dtype if manifest.vectors else "auto")
        masked = len(index.deleted_rows)
        _write(path, chunks, manifest.encoder, factory=factory or manifest.index_factory,
               metric=manifest.metric, train_sample=train_sample, overwrite=True, corpus=manifest.corpus,
               store_vectors=mode, history=manifest.history, action="compact", created_at=manifest.created_at,
               on_disk=manifest.on_disk, truncated=lambda: manifest.truncated_documents,
               merge_policy=manifest.merge_policy, generation=manifest.generation)
    return UpdateReport(action="compact", removed=masked, num_docs=IndexManifest.load(path).num_docs)


def merge_indexes(inputs: Sequence[str | Path], out: str | Path, *, factory: str | None = None,
                  metric: str | None = None, train_sample: int = DEFAULT_TRAIN_SAMPLE, overwrite: bool = False,
                  store_vectors: str = "auto", on_disk: bool = False) -> Path:
    """One index from index folders and/or encode-shard folders (`embedkit encode --out`), in the given order.

    All inputs must come from the same encoder; document ids must be unique across inputs.
    """
    from embedkit.encoding.shards import is_shard_folder, open_shards

    if not inputs:
        raise EmbedkitError("nothing to merge: give index folders or encode-shard folders")
    sources: list = []
    for item in inputs:
        item = Path(item)
        sources.append(open_shards(item) if is_shard_folder(item) else _open_dense(item, verify=True))
    first = sources[0]
    spec: EncoderSpec = first.spec
    for source, item in zip(sources[1:], inputs[1:], strict=True):
        differing = [name for name in SPEC_FIELDS if getattr(source.spec, name) != getattr(spec, name)]
        if differing:
            raise ModelMismatchError(f"{item} was encoded differently from {inputs[0]} ({', '.join(differing)} differ)")
    indexes = [source for source in sources if isinstance(source, DenseIndex)]
    for index in indexes:
        _require_vectors(index, "merge")
    factory = factory or (indexes[0].manifest.index_factory if indexes else None) or "Flat"
    metric = metric or (indexes[0].manifest.metric if indexes else None) or "ip"
    starts: list[int] = []  # first output row of each input, to name the inputs of a duplicate id

    def chunks() -> Iterator[tuple[list[Document], np.ndarray]]:
        row = 0
        for source in sources:
            starts.append(row)
            for docs, vectors in (_index_chunks(source) if isinstance(source, DenseIndex) else source.iter_chunks()):
                row += len(docs)
                yield docs, vectors

    def input_of(row: int) -> str:
        position = max(i for i, start in enumerate(starts) if start <= row)
        return str(inputs[position])

    history = [HistoryEntry(action="merge", documents=None, source=", ".join(str(item) for item in inputs))]
    try:
        return _write(out, chunks(), spec, factory=factory, metric=metric, train_sample=train_sample,
                      overwrite=overwrite, corpus=None, store_vectors=store_vectors, history=history, action="build",
                      on_disk=on_disk)
    except DuplicateIdError as error:
        first, second = input_of(error.first_row), input_of(error.second_row)
        where = f"in both {first} and {second}" if first != second else f"twice in {first}"
        raise EmbedkitError(f"cannot merge: document id {error.doc_id!r} occurs {where}; document ids must be "
                            "unique across the merged inputs (remove it from one of them first)") from None


def reencode_index(path: str | Path, model: str, *, out: str | Path | None = None, factory: str | None = None,
                   query_prefix: str | None = None, passage_prefix: str | None = None, max_length: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, device: str = "auto", overwrite: bool = False,
                   quiet: bool = False) -> Path:
    """Re-encode every live document of a dense index with `model` (e.g. after a BOOM update); returns the new
    index folder (`out`, default: the index itself, replaced).

    Prefixes, normalization, max length, metric, factory and vector storage default to the old index's; the
    history is kept with a `reencode` entry appended. One locked swap, like every update: the folder's lock is
    held from reading the old manifest (before the model loads) through the swap, and the new folder is written
    whole, manifest included, so a crash leaves the old index or the new one with its full history, and an
    update that arrives meanwhile waits and lands on the re-encoded index.
    """
    from embedkit.encoding import Encoder, EncoderConfig

    path = Path(path)
    target = Path(out) if out else path
    in_place = real_folder(target) == real_folder(path)
    if not in_place:  # before the model loads: is --out ours to write?
        check_replaceable(target, overwrite=overwrite, marker=MANIFEST_NAME, what="embedkit index")
    with _folder_locks(path, target):
        index = _open_dense(path, verify=True)
        manifest = index.manifest
        if manifest.num_docs == 0:
            raise EmbedkitError(f"{path} has no documents to re-encode")
        spec = manifest.encoder
        encoder = Encoder(EncoderConfig(
            model=model,
            query_prefix=spec.query_prefix if query_prefix is None else query_prefix,
            passage_prefix=spec.passage_prefix if passage_prefix is None else passage_prefix,
            normalize=spec.normalize,
            max_length=spec.max_length if max_length is None else max_length,
            batch_size=batch_size,
            device=device,
        ))
        documents = (doc for _, doc in index.docstore.iter_documents())
        entry = HistoryEntry(action="reencode", source=str(path), previous_model=spec.model, model=encoder.spec.model)
        _write(target, encoder.iter_encoded(documents, total=manifest.num_docs, quiet=quiet), encoder.spec,
               factory=factory or manifest.index_factory, metric=manifest.metric, train_sample=DEFAULT_TRAIN_SAMPLE,
               overwrite=in_place or overwrite, corpus=manifest.corpus,
               store_vectors=manifest.vectors.dtype if manifest.vectors else "auto", history=manifest.history,
               entry=entry, created_at=manifest.created_at if in_place else None,
               on_disk=manifest.on_disk and not factory, truncated=lambda: encoder.truncated_documents,
               merge_policy=manifest.merge_policy, generation=manifest.generation if in_place else 0)
    return target


# --- internals -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _folder_locks(*paths: Path) -> Iterator[None]:
    """Hold the locks of several folders, taken in one order (by real path) so two such writers cannot deadlock."""
    with contextlib.ExitStack() as stack:
        for real in sorted({real_folder(path) for path in paths}):
            stack.enter_context(folder_lock(real))
        yield


def _dense_manifest(path: Path, *, verify: bool = False) -> DenseManifest:
    """The manifest of the dense index at `path`, after the cheap checks (and the full checksums with `verify`)."""
    manifest = IndexManifest.load(path)
    if not isinstance(manifest, DenseManifest):
        raise IndexFormatError(f"{path} is a {manifest.kind} index; only dense indexes can be updated this way")
    if verify:
        verify_dense(path, manifest)
    elif manifest.segments:
        manifest.check_files(path)  # document counts are checked by the segments that are opened
    else:
        check_folder(path, manifest)
    return manifest


def _open_dense(path: Path, *, verify: bool = False) -> DenseIndex:
    return DenseIndex(path, _dense_manifest(path, verify=verify))


def _require_vectors(index: DenseIndex, what: str) -> None:
    if not index.vectors_exact:
        raise EmbedkitError(
            f"cannot {what} {index.path}: its FAISS index is lossy ({index.manifest.index_factory}) and the folder "
            "keeps no copy of the vectors (indexes built by older embedkit); rebuild it with `embedkit index build`"
        )


def _index_chunks(index: DenseIndex) -> Iterator[tuple[list[Document], np.ndarray]]:
    batch: list[tuple[int, Document]] = []
    for item in index.docstore.iter_documents():
        batch.append(item)
        if len(batch) == READ_BATCH:
            yield _materialize(index, batch)
            batch = []
    if batch:
        yield _materialize(index, batch)


def _materialize(index: DenseIndex, batch: list[tuple[int, Document]]) -> tuple[list[Document], np.ndarray]:
    rows = np.array([row for row, _ in batch], dtype=np.int64)
    return [doc for _, doc in batch], index.vectors(rows)


@contextlib.contextmanager
def _update(path: Path, action: str, source: str | None) -> Iterator[SegmentedUpdate]:
    """An update committed as new segment files and a manifest swap, under the folder's lock."""
    with folder_lock(path):
        manifest = _dense_manifest(path)
        check_update_files(path, manifest)  # only what the update reads whole: never carry damage forward
        with segmented_update(path, manifest, UpdateReport(action=action), source=source) as update:
            yield update
