"""Checkpointed, sharded encoding: embeddings written in parts that survive `kill -9` and resume exactly.

    from embedkit.encoding.shards import encode_shards
    encode_shards("corpus.jsonl", "shards/", encoder)                          # one process
    encode_shards("corpus.jsonl", "shards/", encoder, shard_id=0, num_shards=4)  # worker 0 of 4
    # then: embedkit index merge shards/ --out indexes/NAME   (or merge_indexes(["shards/"], ...))

The corpus is cut into parts of `part_size` documents in corpus order; part p belongs to worker
p mod num_shards. Each finished part is written atomically (`part-P.npy` vectors, `part-P.jsonl` documents)
and only then recorded in the worker's checkpoint, so a killed worker restarted with the same arguments skips
the recorded parts and re-encodes the rest. Parts are encoded independently, so an interrupted-and-resumed
run produces the same bytes as an uninterrupted one, and the merged index does not depend on how many
workers shared the work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedkit.data.corpus import Document, FieldMap, iter_documents
from embedkit.encoding.config import EncoderSpec
from embedkit.encoding.encoder import Encoder
from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.io import atomic_write

SHARDS_MANIFEST = "encode.json"
StoreDtype = Literal["float32", "float16"]


class ShardsManifest(BaseModel):
    """What was encoded and how it is cut; every worker of one encode job must agree on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    encoder: EncoderSpec
    corpus: str
    part_size: int = Field(gt=0)
    num_shards: int = Field(gt=0)
    dtype: StoreDtype = "float32"


class Checkpoint(BaseModel):
    """One worker's progress: finished parts (part -> documents, sha256 of the vectors file)."""

    model_config = ConfigDict(extra="forbid")

    shard_id: int
    num_shards: int
    parts: dict[int, tuple[int, str]] = Field(default_factory=dict)
    done: bool = False
    total_parts: int | None = None
    documents: int = 0


def part_name(part: int) -> str:
    return f"part-{part:08d}"


def checkpoint_path(out: Path, shard_id: int, num_shards: int) -> Path:
    return out / f"checkpoint-{shard_id:05d}-of-{num_shards:05d}.json"


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / SHARDS_MANIFEST).is_file()


def encode_shards(
    corpus: str | Path,
    out: str | Path,
    encoder: Encoder,
    *,
    fields: FieldMap | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    part_size: int = 8192,
    dtype: StoreDtype = "float32",
    devices: Sequence[str] | None = None,
    quiet: bool = True,
) -> Checkpoint:
    """Encode this worker's parts of `corpus` into `out`, resuming from its checkpoint. Returns the checkpoint.

    `devices` (e.g. ["cuda:0", "cuda:1"]) encodes each part across several GPUs with a
    sentence-transformers multi-process pool; by default all visible GPUs are used when there are several.
    """
    if not 0 <= shard_id < num_shards:
        raise EmbedkitError(f"--shard-id must be in 0..{num_shards - 1}, got {shard_id}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ShardsManifest(encoder=encoder.spec, corpus=str(corpus), part_size=part_size, num_shards=num_shards,
                              dtype=dtype)
    _claim_folder(out, manifest)
    path = checkpoint_path(out, shard_id, num_shards)
    checkpoint = _load_checkpoint(path) or Checkpoint(shard_id=shard_id, num_shards=num_shards)
    if checkpoint.done:
        return checkpoint
    pool = _multi_gpu_pool(encoder, devices)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(unit="doc", desc=f"encoding shard {shard_id}/{num_shards}", disable=quiet)
        part = -1
        iterator = iter(iter_documents(corpus, fields or FieldMap()))
        while docs := list(islice(iterator, part_size)):
            part += 1
            if part % num_shards != shard_id or part in checkpoint.parts:
                continue
            vectors = _encode(encoder, docs, pool).astype(dtype)
            digest = write_part(out, part, docs, vectors)
            checkpoint.parts[part] = (len(docs), digest)
            checkpoint.documents += len(docs)
            _save_checkpoint(path, checkpoint)  # only after the part's files are complete
            bar.update(len(docs))
        bar.close()
    finally:
        if pool is not None:
            encoder.model.stop_multi_process_pool(pool)
    checkpoint.done, checkpoint.total_parts = True, part + 1
    _save_checkpoint(path, checkpoint)
    return checkpoint


def write_part(out: Path, part: int, docs: Sequence[Document], vectors: np.ndarray) -> str:
    """Write one part atomically (documents first, vectors last); returns the vectors file's sha256."""
    with atomic_write(out / f"{part_name(part)}.jsonl") as handle:
        for doc in docs:
            handle.write(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")
    with atomic_write(out / f"{part_name(part)}.npy", "wb") as handle:
        np.save(handle, vectors)
    return _sha256(out / f"{part_name(part)}.npy")


class ShardSet:
    """A finished shard folder, read part by part in corpus order (what `merge_indexes` consumes)."""

    def __init__(self, folder: Path, manifest: ShardsManifest, parts: dict[int, tuple[int, str]]) -> None:
        self.folder, self.manifest, self.parts = folder, manifest, parts

    @property
    def spec(self) -> EncoderSpec:
        return self.manifest.encoder

    @property
    def num_docs(self) -> int:
        return sum(count for count, _ in self.parts.values())

    def iter_chunks(self) -> Iterator[tuple[list[Document], np.ndarray]]:
        for part in sorted(self.parts):
            count, digest = self.parts[part]
            vectors_path = self.folder / f"{part_name(part)}.npy"
            if _sha256(vectors_path) != digest:
                raise EmbedkitError(f"{vectors_path} does not match its checkpoint (changed or damaged); re-encode it")
            vectors = np.load(vectors_path).astype(np.float32)
            docs = list(_read_docs(self.folder / f"{part_name(part)}.jsonl"))
            if len(docs) != count or len(vectors) != count:
                raise EmbedkitError(f"{self.folder}/{part_name(part)} holds {len(docs)} documents and "
                                    f"{len(vectors)} vectors; the checkpoint recorded {count}")
            yield docs, vectors


def open_shards(folder: str | Path) -> ShardSet:
    """Check that every worker finished and every part is present; refuse an incomplete encode."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    if manifest is None:
        raise EmbedkitError(f"{folder} is not an encode-shard folder (no {SHARDS_MANIFEST})")
    parts: dict[int, tuple[int, str]] = {}
    total: int | None = None
    unfinished = []
    for shard_id in range(manifest.num_shards):
        checkpoint = _load_checkpoint(checkpoint_path(folder, shard_id, manifest.num_shards))
        if checkpoint is None or not checkpoint.done:
            unfinished.append(shard_id)
            continue
        parts.update(checkpoint.parts)
        total = checkpoint.total_parts
    if unfinished:
        raise EmbedkitError(
            f"{folder}: shards {', '.join(map(str, unfinished))} of {manifest.num_shards} are not finished; "
            "run `embedkit encode` for them (it resumes where it stopped)"
        )
    missing = sorted(set(range(total or 0)) - set(parts))
    if missing:
        raise EmbedkitError(f"{folder}: parts {missing[:5]} are missing; re-run their shards")
    return ShardSet(folder, manifest, parts)


def _encode(encoder: Encoder, docs: list[Document], pool) -> np.ndarray:
    if pool is None:
        return encoder.encode_documents(docs)
    vectors = encoder.model.encode(
        encoder.document_texts(docs), prompt=encoder.passage_prefix or None, pool=pool,
        batch_size=encoder.config.batch_size, normalize_embeddings=encoder.config.normalize,
        convert_to_numpy=True, show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _multi_gpu_pool(encoder: Encoder, devices: Sequence[str] | None):
    """A sentence-transformers process pool over several CUDA devices, or None for single-device encoding."""
    import torch

    if devices is None:
        if not encoder.device.startswith("cuda") or torch.cuda.device_count() < 2:
            return None
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(devices) < 2:
        return None
    return encoder.model.start_multi_process_pool(list(devices))


def _claim_folder(out: Path, manifest: ShardsManifest) -> None:
    existing = _load_manifest(out)
    if existing is None:
        with atomic_write(out / SHARDS_MANIFEST) as handle:
            handle.write(manifest.model_dump_json(indent=2) + "\n")
    elif existing != manifest:
        differing = [name for name in ShardsManifest.model_fields if getattr(existing, name) != getattr(manifest, name)]
        raise EmbedkitError(
            f"{out} holds shards of a different encode job ({', '.join(differing)} differ); "
            "use another --out folder, or delete this one to start over"
        )


def _load_manifest(folder: Path) -> ShardsManifest | None:
    path = folder / SHARDS_MANIFEST
    if not path.is_file():
        return None
    try:
        return ShardsManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise DataFormatError(f"damaged: {str(error).splitlines()[0]}", path=path) from None


def _load_checkpoint(path: Path) -> Checkpoint | None:
    if not path.is_file():
        return None
    try:
        return Checkpoint.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise DataFormatError(f"damaged checkpoint: {str(error).splitlines()[0]}", path=path) from None


def _save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    with atomic_write(path) as handle:
        handle.write(checkpoint.model_dump_json() + "\n")


def _read_docs(path: Path) -> Iterable[Document]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            yield Document(id=record["id"], title=record["title"], text=record["text"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
