"""Ranked results ("runs"): TREC 6-column files and jsonl with texts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from embedkit.data._files import iter_delimited, require_file
from embedkit.errors import DataFormatError
from embedkit.io import atomic_write

Run = dict[str, dict[str, float]]


def ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents by descending score; ties broken by id so output is deterministic."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, *, tag: str = "embedkit") -> None:
    """Write `qid Q0 docid rank score tag` lines, atomically."""
    with atomic_write(path) as handle:
        for query_id, scores in run.items():
            for rank, (doc_id, score) in enumerate(ranked(scores), start=1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def write_jsonl_run(results: Mapping[str, list[dict]], path: str | Path) -> None:
    """One line per query: {"query_id", "query", "hits": [{"id", "score", "rank", "title", "text"}]}."""
    with atomic_write(path) as handle:
        for query_id, payload in results.items():
            handle.write(json.dumps({"query_id": query_id, **payload}, ensure_ascii=False) + "\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC run (6 columns); the run's own scores are kept, ranks are ignored as in trec_eval."""
    path = require_file(path, "run file")
    run: Run = {}
    for line, columns in iter_delimited(path, None):
        if len(columns) != 6:
            raise DataFormatError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(columns)}", path=path, line=line)
        try:
            score = float(columns[4])
        except ValueError:
            raise DataFormatError(f"score '{columns[4]}' is not a number", path=path, line=line) from None
        run.setdefault(columns[0], {})[columns[2]] = score
    if not run:
        raise DataFormatError("empty run file", path=path)
    return run
