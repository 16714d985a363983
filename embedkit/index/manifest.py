"""`manifest.json`: one typed description of an index folder — what it holds, how to query it, how to check it.

A manifest is one of the kinds of a discriminated union on `kind`:

- `DenseManifest` (`kind: "dense"`): the encoder spec, metric, FAISS factory, default search parameters,
  stored-vectors copy, on-disk flag and the next free row id;
- `BM25Manifest` (`kind: "bm25"`): the BM25 settings and facts about the backend that wrote it.

Both record every file of the folder with its size and SHA-256 (`files`), and the document count. Loading
checks the cheap things (files present with their recorded sizes); `verify_checksums` reads every byte
(`embedkit index verify`, and before every update). Format 1 manifests (embedkit ≤ 0.1, `settings` as a free
dict, sizes without checksums) are migrated on load by `migrate_v1`.

An index folder is input from strangers (people share them), so loading also refuses a manifest that could
lead a reader or a writer outside its folder (`embedkit.index.members`): every recorded path must be relative
and inside the folder, no entry may be a symlink leaving it (except the FAISS file `embedkit index import
--link` symlinked and recorded) or a FIFO/device, and every file a reader opens must be recorded with a
checksum (only format-1 manifests and that imported link have none).

    manifest = IndexManifest.load("indexes/scifact")     # a DenseManifest or a BM25Manifest
    manifest.kind, manifest.num_docs
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from embedkit.encoding.config import EncoderSpec
from embedkit.errors import DataFormatError, IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME
from embedkit.index.members import FolderScan, check_member_name, scan_folder
from embedkit.index.merge_policy import MergePolicy
from embedkit.io import atomic_write
from embedkit.lexical.segments import BM25Segment, DocstorePart
from embedkit.lexical.settings import BM25Settings

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
#: A dense folder of several segments (`embedkit.index.segments`); older embedkit refuses it as newer.
SEGMENTED_FORMAT = 3
LATEST_FORMAT = SEGMENTED_FORMAT
# Files of a dense folder (`embedkit.index.dense` reads them; named here so the manifest can require them).
FAISS_NAME = "index.faiss"
DELETED_NAME = "deleted.npy"
IVFDATA_NAME = "index.ivfdata"
VECTOR_FILES = {"float16": "vectors.f16", "float32": "vectors.f32"}
# FAISS ids are int64; far below its limit, so that row arithmetic (next_row + documents) cannot overflow.
MAX_ROW = 2**62
#: A path recorded in a manifest: relative, canonical, inside the folder (see `embedkit.index.members`).
MemberName = Annotated[str, AfterValidator(check_member_name)]
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

    @model_validator(mode="after")
    def _plain_extras(self) -> HistoryEntry:
        # Writers add counts and names; a nested value from a crafted manifest would only break printing and saving.
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, str | int | float | bool | None):
                raise ValueError(f"{name!r} holds a {type(value).__name__}; history details are plain values")
        return self


class FileRecord(BaseModel):
    """Size and SHA-256 of one file of the folder, recorded when it was written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="None for files recorded by format-1 manifests")


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

    file: MemberName
    dtype: Literal["float16", "float32"]

    @model_validator(mode="after")
    def _named_for_its_dtype(self) -> StoredVectors:
        # Updates write rows into this file: it must be the vectors file, never another file of the folder.
        if self.file != VECTOR_FILES[self.dtype]:
            raise ValueError(f"file {self.file!r} is not where {self.dtype} vectors are kept "
                             f"({VECTOR_FILES[self.dtype]!r})")
        return self


class IndexManifest(BaseModel):
    """Fields every kind of index folder records. `IndexManifest.load` returns the concrete kind."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: str
    format_version: int = FORMAT_VERSION
    num_docs: int = Field(ge=0)
    corpus: str | None = None
    embedkit_version: str
    created_at: str = Field(default_factory=utc_now)
    files: dict[MemberName, FileRecord] = Field(default_factory=dict, description="every file of the folder")
    history: list[HistoryEntry] = Field(default_factory=list)
    # The format the file on disk had when loaded (1: migrated, its files have sizes only).
    _read_format: int = PrivateAttr(FORMAT_VERSION)

    def save(self, folder: Path) -> None:
        with atomic_write(Path(folder) / MANIFEST_NAME) as handle:
            handle.write(self.model_dump_json(indent=2, exclude=self._unsaved_fields()) + "\n")

    def _unsaved_fields(self) -> set[str]:
        """Fields left out of the saved JSON (at their defaults in a layout that predates them)."""
        return set()

    @classmethod
    def load(cls, folder: str | Path) -> AnyManifest:
        """Read, migrate and validate `folder/manifest.json`; the result is the concrete kind's manifest.

        Refuses (IndexFormatError) a manifest whose paths or folder entries lead outside the folder, and one
        that leaves a file it reads unrecorded or without a checksum (see the module docstring).
        """
        from embedkit.io import recover_if_interrupted

        folder = Path(folder)
        recover_if_interrupted(folder)
        path = folder / MANIFEST_NAME
        if not folder.exists():
            raise IndexFormatError(f"{folder} is not an index: no such folder")
        if not folder.is_dir():
            raise IndexFormatError(f"{folder} is not an index: it is a file, not a folder")
        scan = scan_folder(folder)
        # Before anything is read: only the imported FAISS file may be a link out (checked against the manifest
        # below), and nothing may be a FIFO or a device (opening a FIFO would block forever).
        _refuse_unsafe_entries(folder, scan, allowed=frozenset({FAISS_NAME}))
        if not path.is_file():
            raise IndexFormatError(f"{folder} is not an embedkit index: it has no {MANIFEST_NAME}")
        data = _read_json(path)
        if not isinstance(data, dict):
            raise IndexFormatError(f"{path} is damaged: expected a JSON object")
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise IndexFormatError(f"{path} is damaged: field 'format_version': {str(version)[:40]!r} is not a "
                                   f"format embedkit wrote (1 to {LATEST_FORMAT})")
        if version > LATEST_FORMAT:
            raise IndexFormatError(f"{folder} was written by a newer embedkit (format {version}); upgrade embedkit")
        try:
            if version < 2:
                data = migrate_v1(data, folder)
            manifest = _MANIFEST_ADAPTER.validate_python(data)
        except ValidationError as error:
            raise IndexFormatError(f"{path} is damaged: {_validation_message(error)}") from None
        except (TypeError, ValueError, AttributeError) as error:  # a format-1 layout migrate_v1 cannot read
            raise IndexFormatError(f"{path} is damaged: unreadable format-1 manifest ({error})") from None
        manifest._read_format = version
        if cls is not IndexManifest and not isinstance(manifest, cls):
            raise IndexFormatError(f"{folder} is a {manifest.kind} index, not a {cls.kind_name} index")
        manifest._check_recorded(folder, scan)
        return manifest

    def external_links(self) -> dict[str, list[str]]:
        """Files that may be symlinks leading outside the folder, with the targets the manifest recorded."""
        return {}

    def required_files(self, folder: Path) -> set[str]:
        """Files a reader of this kind opens, so the manifest must record them (with checksums)."""
        return {DOCSTORE_NAME}

    def _check_recorded(self, folder: Path, scan: FolderScan) -> None:
        """Links out are the recorded ones; files readers open are recorded; format 2 has every checksum."""
        path = folder / MANIFEST_NAME
        links = self.external_links()
        for name, target in scan.outside.items():
            recorded = {os.path.realpath(source) for source in links.get(name, [])}
            if target not in recorded or name not in self.files:
                _refuse_unsafe_entries(folder, FolderScan(outside={name: target}), allowed=frozenset())
        for name in sorted(self.required_files(folder) - set(self.files)):
            raise IndexFormatError(f"{path} is damaged: field 'files' does not record {name}, which the index "
                                   "reads (a manifest records every file of its folder); rebuild the index")
        if self._read_format >= 2:
            for name, record in self.files.items():
                if record.sha256 is None and name not in scan.outside:
                    raise IndexFormatError(
                        f"{path} is damaged: field 'files': {name!r} has no checksum (sha256: null); format "
                        f"{FORMAT_VERSION} records one for every file it writes (only format-1 manifests lack "
                        "them), so the manifest was edited; rebuild the index")

    kind_name: ClassVar[str] = "embedkit"

    def record_files(self, folder: Path, *, checksums: bool = True) -> None:
        """Record every file under `folder` (sub-folders included) with its size and SHA-256."""
        folder = Path(folder)
        records: dict[str, FileRecord] = {}
        outside = scan_folder(folder).outside
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name not in UNTRACKED_FILES and ".tmp-" not in path.name:
                name = path.relative_to(folder).as_posix()
                # A file linked in from outside (a prebuilt FAISS index imported with --link) is not ours to hash
                # on every write: it is checked by size only.
                hashed = checksums and name not in outside
                records[name] = FileRecord(size=path.stat().st_size, sha256=file_sha256(path) if hashed else None)
        self.files = records

    def check_files(self, folder: Path) -> None:
        """Cheap damage check: every recorded file is present with its recorded size."""
        folder = Path(folder)
        for name, record in self.files.items():
            path = folder / name
            if not path.is_file():
                what = "a folder, not a file" if path.is_dir() else "missing"
                raise IndexFormatError(f"index {folder} is damaged: {path} is {what}")
            actual = path.stat().st_size
            if actual != record.size:
                raise IndexFormatError(
                    f"index {folder} is damaged: {path} has {actual} bytes, the manifest recorded {record.size} "
                    "(truncated or overwritten); rebuild the index"
                )

    def verify_checksums(self, folder: Path) -> list[str]:
        """Full damage check: sizes, then SHA-256 of every byte. Returns the files that have no recorded checksum
        (`load` allows that only in format-1 manifests and for the link `embedkit index import --link` made)."""
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

#: Names of the files of segment N (`embedkit.index.segments`); segment 0 of a converted folder keeps its old names.
SEGMENT_FILE = re.compile(r"^seg-(?P<id>\d{6,})\.(?:faiss|docstore\.sqlite|vectors\.f16|vectors\.f32|"
                          r"del-(?P<gen>\d{6,})\.npy)$")
TRAINED_FILE = re.compile(r"^trained-(?P<gen>\d{6,})\.faiss$")


def segment_file(segment: int, what: str) -> str:
    """The name of one file of segment `segment`: what is faiss, docstore.sqlite, vectors.f16/f32 or del-GEN.npy."""
    return f"seg-{segment:06d}.{what}"


class SegmentRecord(BaseModel):
    """One segment of a dense folder: its files, its global rows [row_start, row_stop) and its counts.

    A segment's files never change once written; deletions are a new `deleted` file (the rows to mask).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0, le=MAX_ROW)
    faiss: MemberName
    docstore: MemberName
    vectors: MemberName | None = None
    deleted: MemberName | None = Field(None, description="sorted int64 rows of this segment that are deleted")
    row_start: int = Field(ge=0, le=MAX_ROW)
    row_stop: int = Field(ge=0, le=MAX_ROW)
    num_vectors: int = Field(ge=0, description="vectors in the FAISS file (live, deleted and masked rows)")
    num_stored: int = Field(ge=0, description="rows of the document store")
    num_deleted: int = Field(0, ge=0, description="rows the deletion file lists")
    num_docs: int = Field(ge=0, description="live documents: stored rows not deleted")

    @model_validator(mode="after")
    def _consistent(self) -> SegmentRecord:
        span = self.row_stop - self.row_start
        if span < 0 or self.num_vectors > span or self.num_stored > span:
            raise ValueError(f"segment {self.id}: rows {self.row_start}..{self.row_stop} cannot hold "
                             f"{self.num_vectors} vectors and {self.num_stored} stored documents")
        if self.num_docs > self.num_stored or self.num_docs > self.num_vectors:
            raise ValueError(f"segment {self.id}: {self.num_docs} live documents exceed its stored rows or vectors")
        if (self.deleted is None) != (self.num_deleted == 0):
            raise ValueError(f"segment {self.id}: num_deleted {self.num_deleted} without a deletion file, or the "
                             "reverse")
        return self

    def files(self) -> list[str]:
        return [name for name in (self.faiss, self.docstore, self.vectors, self.deleted) if name is not None]


class DenseManifest(IndexManifest):
    """A FAISS index with the encoder that must be used to query it."""

    kind_name: ClassVar[str] = "dense"

    kind: Literal["dense"] = "dense"
    encoder: EncoderSpec
    metric: Literal["ip", "l2"] = "ip"
    index_factory: str = "Flat"
    train_sample: int = Field(0, ge=0, description="vectors the FAISS index was trained on (0: no training)")
    next_row: int = Field(0, ge=0, le=MAX_ROW, description="the FAISS row id the next added document gets")
    search: SearchDefaults = Field(default_factory=SearchDefaults)
    vectors: StoredVectors | None = Field(None, description="raw copy of the vectors, for updates and compaction")
    on_disk: bool = Field(False, description="IVF lists live in index.ivfdata, read from disk")
    truncated_documents: int | None = Field(
        None, ge=0, description="documents longer than the encoder's max length (cut when encoded)")
    segments: list[SegmentRecord] = Field(
        default_factory=list, description="live segments in row order; empty: the one-segment layout (index.faiss)")
    generation: int = Field(0, ge=0, le=MAX_ROW, description="commits of the segmented layout so far")
    trained_index: MemberName | None = Field(None, description="empty trained FAISS index new segments copy")
    trained_rows: int | None = Field(None, ge=0, description="documents in the index when it was trained")
    added_since_training: int = Field(0, ge=0, description="vectors added to new segments since training")
    merge_policy: MergePolicy = Field(default_factory=MergePolicy, description="when updates merge segments "
                                      "(`embedkit.index.merge_policy`)")

    @model_validator(mode="after")
    def _segments_fit(self) -> DenseManifest:
        # Writers name new files by `generation`: a recorded name from a later generation would be overwritten.
        previous_stop, ids = 0, set()
        for segment in self.segments:
            if segment.id in ids:
                raise ValueError(f"segment {segment.id} is listed twice")
            ids.add(segment.id)
            if segment.row_start < previous_stop or segment.row_stop > self.next_row:
                raise ValueError(f"segment {segment.id}: rows {segment.row_start}..{segment.row_stop} overlap another "
                                 f"segment or pass next_row {self.next_row}")
            previous_stop = segment.row_stop
            for name in segment.files():
                _check_segment_name(name, segment.id, self.generation)
        if self.segments and sum(segment.num_docs for segment in self.segments) != self.num_docs:
            raise ValueError(f"the segments hold {sum(s.num_docs for s in self.segments)} documents, num_docs is "
                             f"{self.num_docs}")
        if self.trained_index is not None:
            match = TRAINED_FILE.match(self.trained_index)
            if match is None or int(match["gen"]) > self.generation:
                raise ValueError(f"trained_index {self.trained_index!r} is not a name embedkit writes")
        return self

    def save(self, folder: Path) -> None:
        # Segment fields saved are format 3 (a policy, a generation kept through compaction): older embedkit
        # must refuse the folder as newer, not as damaged.
        if len(self._unsaved_fields()) < len(_SEGMENT_FIELDS) and self.format_version < SEGMENTED_FORMAT:
            self.format_version = SEGMENTED_FORMAT
        super().save(folder)

    def _unsaved_fields(self) -> set[str]:
        if self.segments:
            return set()
        defaults = DenseManifest.model_fields
        return {name for name in _SEGMENT_FIELDS
                if getattr(self, name) == defaults[name].get_default(call_default_factory=True)}

    @field_validator("encoder")
    @classmethod
    def _usable_encoder(cls, spec: EncoderSpec) -> EncoderSpec:
        # The spec is rebuilt into an encoder at search time: numbers it cannot run with are damage here.
        if spec.dim < 1:
            raise ValueError(f"dim {spec.dim} is not a vector dimension (at least 1)")
        if spec.max_length is not None and spec.max_length < 1:
            raise ValueError(f"max_length {spec.max_length} is not a token count (at least 1, or null)")
        return spec

    @classmethod
    def load(cls, folder: str | Path) -> DenseManifest:
        """`IndexManifest.load` for a dense folder; another kind's folder is refused."""
        return _as_kind(super().load(folder), DenseManifest)

    def external_links(self) -> dict[str, list[str]]:
        """The FAISS file `embedkit index import --link` symlinked: its `import` entry records the target."""
        sources = [entry.source for entry in self.history if entry.action == "import" and entry.source]
        return {FAISS_NAME: sources} if sources else {}

    def required_files(self, folder: Path) -> set[str]:
        if self.segments:  # every file of every live segment, and the trained template
            named = {name for segment in self.segments for name in segment.files()}
            return named | ({self.trained_index} if self.trained_index else set())
        required = {*super().required_files(folder), FAISS_NAME}
        if self.vectors is not None:
            required.add(self.vectors.file)
        if self.on_disk:
            required.add(IVFDATA_NAME)
        if (folder / DELETED_NAME).exists() or os.path.islink(folder / DELETED_NAME):
            required.add(DELETED_NAME)  # read whenever present
        return required


#: DenseManifest fields of the segmented layout (format 3), left out of a one-segment manifest at their defaults.
_SEGMENT_FIELDS = ("segments", "generation", "trained_index", "trained_rows", "added_since_training", "merge_policy")


def _check_segment_name(name: str, segment: int, generation: int) -> None:
    """A segment file is named for its segment (segment 0 may keep the one-segment layout's names)."""
    legacy = {FAISS_NAME, DOCSTORE_NAME, DELETED_NAME, *VECTOR_FILES.values()}
    if segment == 0 and name in legacy:
        return
    match = SEGMENT_FILE.match(name)
    if (match is None or int(match["id"]) != segment or segment > generation
            or (match["gen"] is not None and int(match["gen"]) > generation)):
        raise ValueError(f"segment {segment}: file {name!r} is not a name embedkit gives this segment's files")


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
    segments: list[BM25Segment] = Field(default_factory=list, description="segments, oldest first (empty: one, "
                                        "written before updates recorded them)")
    docstore_parts: list[DocstorePart] = Field(default_factory=list, description="document-store parts in row "
                                               "order (empty: the one part docstore.sqlite, as built or compacted)")
    generation: int = Field(0, ge=0, description="updates that wrote parts so far; names new files, never reused")

    @model_validator(mode="after")
    def _parts_consistent(self) -> BM25Manifest:
        stop = 0
        for part in self.docstore_parts:
            if part.row_start < stop or part.id > self.generation:
                raise ValueError(f"docstore_parts: part {part.id} overlaps the rows of the part before it or is "
                                 f"newer than generation {self.generation}")
            stop = part.row_stop
        if self.docstore_parts and sum(part.num_docs for part in self.docstore_parts) != self.num_docs:
            raise ValueError(f"docstore_parts hold {sum(p.num_docs for p in self.docstore_parts)} live documents, "
                             f"num_docs says {self.num_docs}")
        return self

    def required_files(self, folder: Path) -> set[str]:
        if self.docstore_parts:
            return {name for part in self.docstore_parts for name in part.files()}
        return super().required_files(folder)

    def _unsaved_fields(self) -> set[str]:
        # A folder without parts is saved as before parts existed (older embedkit reads it).
        return {name for name in ("docstore_parts", "generation") if not getattr(self, name)}

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


def _read_json(path: Path) -> Any:
    """The parsed manifest; malformed, too deeply nested, too long a number, a repeated key → IndexFormatError."""
    from embedkit.data._files import parse_json_line

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise IndexFormatError(f"{path} is damaged: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return parse_json_line(text, path=path, line=1)
    except DataFormatError as error:
        reason = str(error).removeprefix(f"{path}, line 1: ")
        if reason.startswith("malformed JSON"):
            try:  # the parser's own message says where, by line and column, in a many-line manifest
                json.loads(text)
            except json.JSONDecodeError as decode:
                reason = f"malformed JSON ({decode})"
            except (ValueError, RecursionError):
                pass
        raise IndexFormatError(f"{path} is damaged: {reason}") from None


def _validation_message(error: ValidationError) -> str:
    """pydantic's first problem as "field 'dense.metric': …" (a bad `files` key names `files` and the key)."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]  # (…, "files", <the key>, "[key]"): the message quotes the key itself
    message = first["msg"].removeprefix("Value error, ")
    return f"field '{'.'.join(loc)}': {message}"


def _refuse_unsafe_entries(folder: Path, scan: FolderScan, *, allowed: frozenset[str]) -> None:
    """IndexFormatError for the first entry of `scan` (other than `allowed` links) a reader must not follow."""
    for name, what in sorted(scan.special.items()):
        raise IndexFormatError(f"index {folder} is damaged or unsafe: {folder / name} is {what}, not a file; an "
                               "index folder holds only files and folders")
    for name, target in sorted(scan.outside.items()):
        if name not in allowed:
            raise IndexFormatError(
                f"index {folder} is unsafe: {folder / name} is a symlink to {target}, outside the folder; an index "
                "folder may only link out the FAISS file `embedkit index import --link` recorded in "
                f"{MANIFEST_NAME}. Refusing to read or write through it (replace the link by the file itself, "
                "or re-import)")


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
    from embedkit.index.docstore import DocStore
    from embedkit.index.masked import load_deleted_rows

    highest = -1
    store_path = folder / DOCSTORE_NAME
    if store_path.is_file():
        store = DocStore(store_path)
        try:
            highest = store.next_row() - 1
        finally:
            store.close()
    deleted = folder / DELETED_NAME
    if deleted.is_file():
        rows = load_deleted_rows(deleted)
        if len(rows):
            highest = max(highest, int(rows.max()))
    return highest + 1
