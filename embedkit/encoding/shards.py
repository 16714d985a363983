"""Checkpointed, sharded encoding: embeddings written in parts that survive `kill -9` and resume exactly.

    from embedkit.encoding.shards import encode_shards
    encode_shards("corpus.jsonl", "shards/", encoder)                          # one process
    encode_shards("corpus.jsonl", "shards/", encoder, shard_id=0, num_shards=4)  # worker 0 of 4
    # then: embedkit index merge shards/ --out indexes/NAME   (or merge_indexes(["shards/"], ...))

The corpus is cut into parts of `part_size` documents in corpus order; part p belongs to worker
p mod num_shards. Each finished part is written atomically (`part-P.jsonl` documents, then `part-P.npy`
vectors) and only then recorded in the worker's checkpoint with the size and SHA-256 of every file of the part,
so a killed worker restarted with the same arguments skips the recorded parts and re-encodes the rest. Parts
are encoded independently, so an interrupted-and-resumed run produces the same bytes as an uninterrupted one,
and the merged index does not depend on how many workers shared the work.

Checks: a worker resuming re-hashes its recorded parts and re-encodes (with a warning naming the file) any part
whose files changed, went missing or were cut short; the reader (`open_shards(...).iter_chunks()`, used by
`embedkit index merge`) refuses such a part with an `EmbedkitError` naming the file. One worker's process holds
the lock of its checkpoint while it runs, so a second process for the same shard waits rather than interleaves.
A resuming worker also re-reads the documents of its recorded parts from the corpus and refuses to go on when
they differ from what was encoded (an edited corpus would otherwise mix two versions in one index); a worker
that had finished returns at once and does not re-read the corpus.

Folders written before the checksums (checkpoint `format_version` 1: each part recorded as [documents,
sha256 of the .npy]) stay readable: their .npy files are checked as before, their .jsonl files are parsed
strictly (a damaged line is an error naming the file and the line) but have no checksum, which the reader says
in a warning. A resumed old folder keeps its old entries as they are and records new parts with checksums.

`EMBEDKIT_CRASH_AT=<step>` (one of `PART_STEPS`) kills the process at that step of writing a part; the
fault-injection tests use it to check that every crash leaves a state that resumes to the same output.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedkit.data._files import parse_json_line
from embedkit.data.corpus import Document, FieldMap, iter_documents
from embedkit.encoding.config import EncoderSpec
from embedkit.encoding.encoder import Encoder
from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.io import atomic_write, crash_point, folder_lock

log = logging.getLogger(__name__)

SHARDS_MANIFEST = "encode.json"
StoreDtype = Literal["float32", "float16"]
#: Checkpoints written now; format 1 (no `format_version` field) recorded only the .npy file's sha256.
CHECKPOINT_FORMAT = 2
#: Points of writing one part where `EMBEDKIT_CRASH_AT` can kill the process (fault-injection tests).
PART_STEPS = (
    "part-docs-filling",     # inside the write of part-P.jsonl: its temporary file is half written
    "part-docs-written",     # part-P.jsonl is in place, part-P.npy is not
    "part-vectors-written",  # both files are in place, the checkpoint does not record them yet
    "part-recorded",         # the checkpoint records the part
    "shard-parts-recorded",  # every part of the worker is recorded, the checkpoint does not say done yet
)
# Temporary files of atomic_write (NAME.tmp-PID-TOKEN) that a killed worker leaves beside its part files.
_PART_TMP = re.compile(r"^part-(?P<part>\d{8})\.[a-z]+\.tmp-\d+-[0-9a-f]{8}$")


class ShardsManifest(BaseModel):
    """What was encoded and how it is cut; every worker of one encode job must agree on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    encoder: EncoderSpec
    corpus: str
    part_size: int = Field(gt=0)
    num_shards: int = Field(gt=0)
    dtype: StoreDtype = "float32"


class FileDigest(BaseModel):
    """Size and SHA-256 of one file of a part, taken from the bytes written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def of(cls, data: bytes) -> FileDigest:
        """The digest of these bytes."""
        return cls(size=len(data), sha256=hashlib.sha256(data).hexdigest())


class PartRecord(BaseModel):
    """A finished part: its document count and every file it consists of (name -> digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: int = Field(ge=0)
    files: dict[str, FileDigest]


#: A part recorded by checkpoint format 1: (documents, sha256 of the .npy file); its .jsonl is unchecked.
LegacyPart = tuple[int, str]


class Checkpoint(BaseModel):
    """One worker's progress: its finished parts (part -> record) and whether it has finished."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1  # absent from format-1 files
    shard_id: int
    num_shards: int
    parts: dict[int, PartRecord | LegacyPart] = Field(default_factory=dict)
    done: bool = False
    total_parts: int | None = None
    documents: int = 0


def part_documents(entry: PartRecord | LegacyPart) -> int:
    """How many documents a recorded part holds (either checkpoint format)."""
    return entry.documents if isinstance(entry, PartRecord) else entry[0]


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
    out = _shard_folder(Path(out))
    manifest = ShardsManifest(encoder=encoder.spec, corpus=str(corpus), part_size=part_size, num_shards=num_shards,
                              dtype=dtype)
    _claim_folder(out, manifest)
    path = checkpoint_path(out, shard_id, num_shards)
    with folder_lock(path):  # one process per shard: a second one waits, then resumes from what the first did
        _sweep_leftovers(out, shard_id, num_shards)
        checkpoint = _load_checkpoint(path) or Checkpoint(shard_id=shard_id, num_shards=num_shards)
        checkpoint.format_version = CHECKPOINT_FORMAT
        if _drop_damaged_parts(out, checkpoint):
            checkpoint.done = False
        if checkpoint.done:
            return checkpoint
        _encode_missing_parts(corpus, out, encoder, checkpoint, path, fields=fields, part_size=part_size,
                              dtype=dtype, devices=devices, quiet=quiet)
    return checkpoint


def _encode_missing_parts(corpus: str | Path, out: Path, encoder: Encoder, checkpoint: Checkpoint, path: Path, *,
                          fields: FieldMap | None, part_size: int, dtype: StoreDtype,
                          devices: Sequence[str] | None, quiet: bool) -> None:
    shard_id, num_shards = checkpoint.shard_id, checkpoint.num_shards
    pool = _multi_gpu_pool(encoder, devices)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(unit="doc", desc=f"encoding shard {shard_id}/{num_shards}", disable=quiet)
        part = -1
        iterator = iter(iter_documents(corpus, fields or FieldMap()))
        while docs := list(islice(iterator, part_size)):
            part += 1
            if part % num_shards != shard_id:
                continue
            if part in checkpoint.parts:
                _check_same_documents(out, part, checkpoint.parts[part], docs)
                continue
            vectors = _encode(encoder, docs, pool).astype(dtype)
            checkpoint.parts[part] = write_part(out, part, docs, vectors)
            checkpoint.documents = sum(map(part_documents, checkpoint.parts.values()))
            _save_checkpoint(path, checkpoint)  # only after the part's files are complete
            crash_point("part-recorded")
            bar.update(len(docs))
        bar.close()
    finally:
        if pool is not None:
            encoder.model.stop_multi_process_pool(pool)
    crash_point("shard-parts-recorded")
    checkpoint.done, checkpoint.total_parts = True, part + 1
    _save_checkpoint(path, checkpoint)


def write_part(out: Path, part: int, docs: Sequence[Document], vectors: np.ndarray) -> PartRecord:
    """Write one part atomically (documents first, vectors last); returns its record (size, sha256 per file)."""
    contents = {f"{part_name(part)}.jsonl": _docs_bytes(docs), f"{part_name(part)}.npy": _npy_bytes(vectors)}
    for (name, data), step in zip(contents.items(), ("part-docs-written", "part-vectors-written"), strict=True):
        with atomic_write(out / name, "wb") as handle:
            handle.write(data)
            if step == "part-docs-written":
                crash_point("part-docs-filling")
        crash_point(step)
    return PartRecord(documents=len(docs), files={name: FileDigest.of(data) for name, data in contents.items()})


def _docs_bytes(docs: Sequence[Document]) -> bytes:
    return "".join(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n"
                   for doc in docs).encode("utf-8")


def _check_same_documents(out: Path, part: int, entry: PartRecord | LegacyPart, docs: Sequence[Document]) -> None:
    """Refuse to resume when the corpus no longer holds the documents a recorded part was encoded from."""
    if not isinstance(entry, PartRecord):
        return  # format 1 recorded no checksum of the documents
    if FileDigest.of(_docs_bytes(docs)) != entry.files[f"{part_name(part)}.jsonl"]:
        raise EmbedkitError(
            f"the corpus changed since {out / part_name(part)} was encoded (its documents, as read with these "
            "field options, differ now); the shards would mix two versions of the corpus. Encode into a new --out "
            "folder")


def _npy_bytes(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    return buffer.getvalue()


class ShardSet:
    """A finished shard folder, read part by part in corpus order (what `merge_indexes` consumes)."""

    def __init__(self, folder: Path, manifest: ShardsManifest, parts: dict[int, PartRecord | LegacyPart]) -> None:
        self.folder, self.manifest, self.parts = folder, manifest, parts

    @property
    def spec(self) -> EncoderSpec:
        return self.manifest.encoder

    @property
    def num_docs(self) -> int:
        return sum(map(part_documents, self.parts.values()))

    def iter_chunks(self) -> Iterator[tuple[list[Document], np.ndarray]]:
        unchecked = sorted(part for part, entry in self.parts.items() if not isinstance(entry, PartRecord))
        if unchecked:
            log.warning("%s: %d part(s) (%s) were written by an older embedkit without checksums of their .jsonl "
                        "files; those are read unchecked (encode into a new folder to have every file checked)",
                        self.folder, len(unchecked), ", ".join(part_name(part) for part in unchecked[:3])
                        + (", ..." if len(unchecked) > 3 else ""))
        for part in sorted(self.parts):
            entry = self.parts[part]
            try:
                docs, vectors = read_part(self.folder, part, entry)
            except _PartDamaged as damage:
                raise EmbedkitError(
                    f"{damage}; run `embedkit encode` again with the same arguments for shard "
                    f"{part % self.manifest.num_shards} of {self.manifest.num_shards}: it re-encodes the damaged "
                    "part") from None
            count = part_documents(entry)
            if len(docs) != count or len(vectors) != count:
                raise EmbedkitError(f"{self.folder}/{part_name(part)} holds {len(docs)} documents and "
                                    f"{len(vectors)} vectors; the checkpoint recorded {count}")
            yield docs, vectors.astype(np.float32)


class _PartDamaged(Exception):
    """A part file that does not match its checkpoint record (the message names the file and what differs)."""


def _part_files(part: int, entry: PartRecord | LegacyPart) -> dict[str, FileDigest | str | None]:
    """The files of a part and what each must match: a digest, a legacy .npy sha256, or None (unchecked).

    A checkpoint may come with a folder from elsewhere: it must name the part's own files, nothing outside them.
    """
    stem = part_name(part)
    if not isinstance(entry, PartRecord):
        return {f"{stem}.jsonl": None, f"{stem}.npy": entry[1]}
    names = set(entry.files)
    strays = sorted(name for name in names if not re.fullmatch(rf"{stem}\.[a-z0-9]+", name))
    missing = sorted({f"{stem}.jsonl", f"{stem}.npy"} - names)
    if strays or missing:
        raise _PartDamaged(f"the checkpoint of {stem} is damaged: it names "
                           + (f"files that are not this part's ({', '.join(map(repr, strays))})" if strays
                              else f"no {' and no '.join(missing)}"))
    return dict(entry.files)


def _mismatch(path: Path, data: bytes, expected: FileDigest | str | None) -> str | None:
    """Why `data` (the bytes of `path`) does not match its record, or None."""
    if expected is None:
        return None
    if isinstance(expected, FileDigest) and len(data) != expected.size:
        return f"{path} has {len(data)} bytes, its checkpoint recorded {expected.size} (cut short or changed)"
    digest = expected.sha256 if isinstance(expected, FileDigest) else expected
    if hashlib.sha256(data).hexdigest() != digest:
        return f"{path} does not match the checksum its checkpoint recorded (changed or damaged)"
    return None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _PartDamaged(f"{path} is missing") from None
    except IsADirectoryError:
        raise _PartDamaged(f"{path} is a folder, not a part file") from None


def verify_part(folder: Path, part: int, entry: PartRecord | LegacyPart) -> None:
    """Raise `_PartDamaged` naming the first file of the part that is missing or differs from its record."""
    for name, expected in _part_files(part, entry).items():
        problem = _mismatch(folder / name, _read_file(folder / name), expected)
        if problem:
            raise _PartDamaged(problem)


def read_part(folder: Path, part: int, entry: PartRecord | LegacyPart) -> tuple[list[Document], np.ndarray]:
    """A part's documents and vectors, each file read once and checked against its record before it is parsed."""
    contents: dict[str, bytes] = {}
    for name, expected in _part_files(part, entry).items():
        contents[name] = _read_file(folder / name)
        problem = _mismatch(folder / name, contents[name], expected)
        if problem:
            raise _PartDamaged(problem)
    docs_name, vectors_name = f"{part_name(part)}.jsonl", f"{part_name(part)}.npy"
    docs = _parse_docs(contents[docs_name], folder / docs_name)
    try:
        vectors = np.load(io.BytesIO(contents[vectors_name]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # only reachable when the record had no checksum
        raise _PartDamaged(f"{folder / vectors_name} is not a readable .npy file ({error})") from None
    if vectors.ndim != 2:
        raise _PartDamaged(f"{folder / vectors_name} holds an array of shape {vectors.shape}, not one vector per row")
    return docs, vectors


def _parse_docs(data: bytes, path: Path) -> list[Document]:
    """The documents of a part's .jsonl, strictly: any damage is a `DataFormatError` naming the file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"not valid UTF-8 at byte offset {error.start}", path=path) from None
    docs = []
    # Split on "\n" only: the texts may hold U+2028 or U+0085, which json.dumps(ensure_ascii=False) leaves raw.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        record = parse_json_line(line, path=path, line=number)
        if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("id", "title", "text")):
            raise DataFormatError("expected an object with string fields id, title and text", path=path, line=number)
        docs.append(Document(id=record["id"], title=record["title"], text=record["text"]))
    return docs


def open_shards(folder: str | Path) -> ShardSet:
    """Check that every worker finished and every part is present; refuse an incomplete encode."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    if manifest is None:
        raise EmbedkitError(f"{folder} is not an encode-shard folder (no {SHARDS_MANIFEST})")
    parts: dict[int, PartRecord | LegacyPart] = {}
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


def _shard_folder(out: Path) -> Path:
    """`out`, created if missing; a path that is a file, or cannot be created, is an `EmbedkitError`."""
    if out.exists() and not out.is_dir():
        raise EmbedkitError(f"--out {out} is a file, not a folder; give a folder for the shards")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EmbedkitError(f"cannot create the shard folder {out}: {error.strerror or error}") from None
    return out


def _sweep_leftovers(out: Path, shard_id: int, num_shards: int) -> None:
    """Remove the temporary part files a killed run of this worker left (its own parts only; called locked)."""
    for entry in os.scandir(out):
        match = _PART_TMP.match(entry.name)
        if match and int(match["part"]) % num_shards == shard_id:
            Path(entry.path).unlink(missing_ok=True)
    for leftover in out.glob(f"{checkpoint_path(out, shard_id, num_shards).name}.tmp-*"):
        leftover.unlink(missing_ok=True)


def _drop_damaged_parts(out: Path, checkpoint: Checkpoint) -> bool:
    """Forget the recorded parts whose files changed or went missing, so they are encoded again; True if any."""
    dropped = False
    for part, entry in sorted(checkpoint.parts.items()):
        try:
            verify_part(out, part, entry)
        except _PartDamaged as damage:
            log.warning("%s; encoding part %d again", damage, part)
            del checkpoint.parts[part]
            dropped = True
    return dropped


def _load_checkpoint(path: Path) -> Checkpoint | None:
    if not path.is_file():
        return None
    try:
        return Checkpoint.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise DataFormatError(f"damaged checkpoint: {str(error).splitlines()[0]}", path=path) from None


def _save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    checkpoint.parts = dict(sorted(checkpoint.parts.items()))  # the same bytes however the parts came in
    with atomic_write(path) as handle:
        handle.write(checkpoint.model_dump_json() + "\n")
