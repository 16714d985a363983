"""`manifest.json`: one typed description of an index folder — what it holds, how to query it, how to check it.

A manifest is one of the kinds of a discriminated union on `kind`:

- `DenseManifest` (`kind: "dense"`): the encoder spec, metric, FAISS factory, default search parameters,
  stored-vectors copy, on-disk flag and the next free row id;
- `BM25Manifest` (`kind: "bm25"`): the BM25 settings and facts about the backend that wrote it.

Both record every file of the folder with its size and SHA-256 (`files`), and the document count. Loading
checks the cheap things (files present with their recorded sizes); `verify_checksums` reads every byte
(`embedkit index verify`, and before every update). Format 1 manifests (embedkit ≤ 0.1, `settings` as a free
dict, sizes without checksums) are migrated on load by `migrate_v1`.

    manifest = IndexManifest.load("indexes/scifact")     # a DenseManifest or a BM25Manifest
    manifest.kind, manifest.num_docs
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from embedkit.encoding.config import EncoderSpec
from embedkit.errors import IndexFormatError
from embedkit.io import atomic_write
from embedkit.lexical.settings import BM25Settings

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
# Files a backend may leave beside its data that are not part of the index (Lucene's lock file).
UNTRACKED_FILES = frozenset({MANIFEST_NAME, "write.lock"})
HASH_CHUNK = 1 << 20


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HistoryEntry(BaseModel):
    """One change to an index (build, add, remove, compact, …), newest last."""

    model_config = ConfigDict(extra="allow")

    action: str
    at: str = Field(default_factory=utc_now)
    documents: int | None = None
    source: str | None = None


class FileRecord(BaseModel):
    """Size and SHA-256 of one file of the folder, recorded when it was written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0)
    sha256: str | None = Field(None, description="None for files recorded by format-1 manifests")


class SearchCalibration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    calibrated_recall: float
    target_recall: float


class SearchDefaults(BaseModel):
    """Search parameters used when a search does not give them (calibrated at build time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    calibration: SearchCalibration | None = None


class StoredVectors(BaseModel):
    """The folder's raw copy of the document vectors (row r at offset r·dim·itemsize)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    dtype: Literal["float16", "float32"]


class IndexManifest(BaseModel):
    """Fields every kind of index folder records. `IndexManifest.load` returns the concrete kind."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: str
    format_version: int = FORMAT_VERSION
    num_docs: int = Field(ge=0)
    corpus: str | None = None
    embedkit_version: str
    created_at: str = Field(default_factory=utc_now)
    files: dict[str, FileRecord] = Field(default_factory=dict, description="every file of the folder")
    history: list[HistoryEntry] = Field(default_factory=list)

    def save(self, folder: Path) -> None:
        with atomic_write(Path(folder) / MANIFEST_NAME) as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> AnyManifest:
        """Read, migrate and validate `folder/manifest.json`; the result is the concrete kind's manifest."""
        from embedkit.io import recover_if_interrupted

        folder = Path(folder)
        recover_if_interrupted(folder)
        path = folder / MANIFEST_NAME
        if not folder.exists():
            raise IndexFormatError(f"{folder} is not an index: no such folder")
        if not folder.is_dir():
            raise IndexFormatError(f"{folder} is not an index: it is a file, not a folder")
        if not path.is_file():
            raise IndexFormatError(f"{folder} is not an embedkit index: it has no {MANIFEST_NAME}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise IndexFormatError(f"{path} is damaged: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise IndexFormatError(f"{path} is damaged: expected a JSON object")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise IndexFormatError(f"{folder} was written by a newer embedkit (format {version}); upgrade embedkit")
        if version < 2:
            data = migrate_v1(data, folder)
        try:
            manifest = _MANIFEST_ADAPTER.validate_python(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise IndexFormatError(f"{path} is damaged: field '{where}': {first['msg']}") from None
        if cls is not IndexManifest and not isinstance(manifest, cls):
            raise IndexFormatError(f"{folder} is a {manifest.kind} index, not a {cls.kind_name} index")
        return manifest

    kind_name: ClassVar[str] = "embedkit"

    def record_files(self, folder: Path, *, checksums: bool = True) -> None:
        """Record every file under `folder` (sub-folders included) with its size and SHA-256."""
        folder = Path(folder)
        records: dict[str, FileRecord] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name not in UNTRACKED_FILES and ".tmp-" not in path.name:
                name = path.relative_to(folder).as_posix()
                # A symlinked file (e.g. a prebuilt FAISS index linked in, not copied) is not ours to hash on
                # every write: it is checked by size only.
                hashed = checksums and not path.is_symlink()
                records[name] = FileRecord(size=path.stat().st_size, sha256=file_sha256(path) if hashed else None)
        self.files = records

    def check_files(self, folder: Path) -> None:
        """Cheap damage check: every recorded file is present with its recorded size."""
        folder = Path(folder)
        for name, record in self.files.items():
            path = folder / name
            if not path.is_file():
                raise IndexFormatError(f"index {folder} is damaged: {path} is missing")
            actual = path.stat().st_size
            if actual != record.size:
                raise IndexFormatError(
                    f"index {folder} is damaged: {path} has {actual} bytes, the manifest recorded {record.size} "
                    "(truncated or overwritten); rebuild the index"
                )

    def verify_checksums(self, folder: Path) -> list[str]:
        """Full damage check: sizes, then SHA-256 of every byte. Returns the files that have no recorded checksum."""
        folder = Path(folder)
        self.check_files(folder)
        unchecked = []
        for name, record in self.files.items():
            if record.sha256 is None:
                unchecked.append(name)
                continue
            if file_sha256(folder / name) != record.sha256:
                raise IndexFormatError(
                    f"index {folder} is damaged: {folder / name} does not match the checksum recorded in "
                    f"{MANIFEST_NAME} (its bytes changed since it was written); rebuild the index"
                )
        return unchecked


class DenseManifest(IndexManifest):
    """A FAISS index with the encoder that must be used to query it."""

    kind_name: ClassVar[str] = "dense"

    kind: Literal["dense"] = "dense"
    encoder: EncoderSpec
    metric: Literal["ip", "l2"] = "ip"
    index_factory: str = "Flat"
    train_sample: int = Field(0, ge=0, description="vectors the FAISS index was trained on (0: no training)")
    next_row: int = Field(0, ge=0, description="the FAISS row id the next added document gets")
    search: SearchDefaults = Field(default_factory=SearchDefaults)
    vectors: StoredVectors | None = Field(None, description="raw copy of the vectors, for updates and compaction")
    on_disk: bool = Field(False, description="IVF lists live in index.ivfdata, read from disk")
    truncated_documents: int | None = Field(
        None, ge=0, description="documents longer than the encoder's max length (cut when encoded)")

    @classmethod
    def load(cls, folder: str | Path) -> DenseManifest:
        """`IndexManifest.load` for a dense folder; another kind's folder is refused."""
        return _as_kind(super().load(folder), DenseManifest)


class BM25BackendInfo(BaseModel):
    """Facts about the software that wrote a BM25 index (for reproducing it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    analyzer: str | None = None
    pyserini_version: str | None = None
    java_version: int | None = None
    bm25s_version: str | None = None


class BM25Manifest(IndexManifest):
    """A BM25 index (pyserini/Lucene or bm25s) over the folder's document store."""

    kind_name: ClassVar[str] = "bm25"

    kind: Literal["bm25"] = "bm25"
    settings: BM25Settings
    backend_info: BM25BackendInfo = Field(default_factory=BM25BackendInfo)

    @classmethod
    def load(cls, folder: str | Path) -> BM25Manifest:
        """`IndexManifest.load` for a BM25 folder; another kind's folder is refused."""
        return _as_kind(super().load(folder), BM25Manifest)


_KindManifest = TypeVar("_KindManifest", bound=IndexManifest)


def _as_kind(manifest: IndexManifest, kind: type[_KindManifest]) -> _KindManifest:
    assert isinstance(manifest, kind)  # IndexManifest.load, called on `kind`, refused any other kind
    return manifest


AnyManifest = Annotated[DenseManifest | BM25Manifest, Field(discriminator="kind")]
_MANIFEST_ADAPTER: TypeAdapter[DenseManifest | BM25Manifest] = TypeAdapter(AnyManifest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def migrate_v1(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Format 1 (free `settings` dict, sizes only) → format 2. Pure except for reading the row count of
    indexes written before `next_row` was recorded."""
    data = dict(data)
    settings = dict(data.pop("settings", None) or {})
    data["format_version"] = FORMAT_VERSION
    data["files"] = {name: {"size": size} if isinstance(size, int) else size
                     for name, size in (data.get("files") or {}).items()}
    kind = data.setdefault("kind", "dense")
    if kind == "dense":
        data["metric"] = data.get("metric") or "ip"
        data["index_factory"] = data.get("index_factory") or "Flat"
        data["train_sample"] = settings.get("train_sample", 0)
        data["next_row"] = settings["next_row"] if "next_row" in settings else _next_free_row(folder)
        search = dict(settings.get("search") or {})
        calibration = search.pop("calibration", None)
        data["search"] = {key: search[key] for key in ("nprobe", "ef_search") if key in search}
        if calibration and {"calibrated_recall", "target_recall"} <= set(calibration):
            data["search"]["calibration"] = {"calibrated_recall": calibration["calibrated_recall"],
                                             "target_recall": calibration["target_recall"]}
        if settings.get("vectors"):
            data["vectors"] = settings["vectors"]
        data["on_disk"] = bool(settings.get("on_disk", False))
    elif kind == "bm25":
        data.pop("encoder", None)
        data.pop("metric", None)
        data.pop("index_factory", None)
        known = set(BM25Settings.model_fields)
        data["settings"] = {key: value for key, value in settings.items() if key in known}
        data["backend_info"] = {key: value for key, value in settings.items()
                                if key in BM25BackendInfo.model_fields}
    return data


def _next_free_row(folder: Path) -> int:
    """max(row)+1 over the document store and the masked rows: what format-1 updates computed each time."""
    import numpy as np

    highest = -1
    store = folder / "docstore.sqlite"
    if store.is_file():
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                value = db.execute("SELECT max(row) FROM docs").fetchone()[0]
            highest = -1 if value is None else int(value)
        except sqlite3.DatabaseError as error:
            raise IndexFormatError(f"document store {store} is damaged: {error}") from None
    deleted = folder / "deleted.npy"
    if deleted.is_file():
        rows = np.load(deleted)
        if len(rows):
            highest = max(highest, int(rows.max()))
    return highest + 1
