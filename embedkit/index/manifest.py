"""`manifest.json`: what an index folder holds and how to query it correctly."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedkit.encoding.config import EncoderSpec
from embedkit.errors import IndexFormatError
from embedkit.io import atomic_write

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HistoryEntry(BaseModel):
    """One change to an index (build, add, remove, compact, …), newest last."""

    model_config = ConfigDict(extra="allow")

    action: str
    at: str = Field(default_factory=utc_now)
    documents: int | None = None
    source: str | None = None


class IndexManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    kind: str = "dense"
    encoder: EncoderSpec | None = None
    metric: str | None = None
    index_factory: str | None = None
    num_docs: int
    corpus: str | None = None
    embedkit_version: str
    created_at: str = Field(default_factory=utc_now)
    files: dict[str, int] = Field(default_factory=dict, description="file name -> size in bytes, to detect damage")
    settings: dict[str, Any] = Field(default_factory=dict, description="kind-specific build settings")
    history: list[HistoryEntry] = Field(default_factory=list)

    def save(self, folder: Path) -> None:
        with atomic_write(folder / MANIFEST_NAME) as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> IndexManifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise IndexFormatError(f"{folder} is not an index: no such folder")
        if not path.is_file():
            raise IndexFormatError(f"{folder} is not an embedkit index: it has no {MANIFEST_NAME}")
        try:
            manifest = cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as error:
            raise IndexFormatError(f"{path} is damaged: {str(error).splitlines()[0]}") from None
        if manifest.format_version > FORMAT_VERSION:
            raise IndexFormatError(
                f"{folder} was written by a newer embedkit (format {manifest.format_version}); upgrade embedkit"
            )
        return manifest

    def record_files(self, folder: Path) -> None:
        self.files = {
            path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST_NAME
        }

    def check_files(self, folder: Path) -> None:
        """Refuse an index whose files were truncated, replaced or lost since it was written."""
        for name, size in self.files.items():
            path = folder / name
            if not path.is_file():
                raise IndexFormatError(f"index {folder} is damaged: {name} is missing")
            actual = path.stat().st_size
            if actual != size:
                raise IndexFormatError(
                    f"index {folder} is damaged: {name} has {actual} bytes, the manifest recorded {size} "
                    "(truncated or overwritten); rebuild the index"
                )
