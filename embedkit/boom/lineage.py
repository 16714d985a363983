"""Lineage stored with every BOOM model (`embedkit_lineage.json`): base, data, ratios, seeds, method.

An update's lineage embeds its base model's lineage, so the full history of a model travels with it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from embedkit.io import atomic_write
from embedkit.training.card import LINEAGE_FILE
from embedkit.training.data import TaskData


def data_fingerprint(path: str | Path) -> str:
    """sha256 of a jsonl/parquet file, or of a BEIR folder's qrels files and queries (what defines its
    pairs); for a hub dataset, of its `hf:` spec (the hub revision is not pinned here)."""
    from embedkit.training.sources import is_hub

    if is_hub(path):
        return "hub-" + hashlib.sha256(str(path).encode()).hexdigest()[:11]
    path = Path(path)
    files = [path] if path.is_file() else sorted([*path.glob("qrels/*.tsv"), path / "queries.jsonl"])
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def describe_tasks(tasks: list[TaskData]) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "path": t.config.path,
            "split": t.config.split,
            "fingerprint": data_fingerprint(t.config.path),
            "groups": len(t.groups),
            "source_groups": t.source_rows,
            "sampling": t.sampled_from,
        }
        for t in tasks
    ]


def read_lineage(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / LINEAGE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_lineage(model_dir: str | Path, record: dict[str, Any]) -> Path:
    record = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **record}
    path = Path(model_dir) / LINEAGE_FILE
    with atomic_write(path) as handle:
        json.dump(record, handle, indent=2)
    return path
