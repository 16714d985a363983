"""Ranked results ("runs"): TREC 6-column files and jsonl with texts.

A TREC run is whitespace-separated, so ids and tags that hold whitespace cannot be written into one:
`write_trec_run` refuses them (use a jsonl run instead) rather than write a file no reader can parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from embedkit.data._files import find_surrogate, iter_lines, require_file, surrogate_message
from embedkit.errors import DataFormatError
from embedkit.io import atomic_write

Run = dict[str, dict[str, float]]

# Whitespace as str.split() sees it (what every TREC reader splits on) and lone surrogates (not UTF-8).
_NOT_TREC_SAFE = re.compile(r"[\s\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents by descending score; ties broken by id so output is deterministic."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def is_trec_safe(value: str) -> bool:
    """True when `value` can be one column of a TREC run or qrels line: non-empty, no whitespace, valid UTF-8."""
    return isinstance(value, str) and value != "" and _NOT_TREC_SAFE.search(value) is None


def check_trec_id(value: str, what: str) -> None:
    """Raise `DataFormatError` when `value` cannot be written as a column of a TREC file."""
    if is_trec_safe(value):
        return
    if not isinstance(value, str) or value == "":
        problem = "is empty" if value == "" else f"is a {type(value).__name__}, not a string"
    else:
        bad = _NOT_TREC_SAFE.search(value)
        assert bad is not None
        char = bad.group()
        problem = (f"holds a lone surrogate (U+{ord(char):04X})" if "\ud800" <= char <= "\udfff"
                   else f"holds whitespace ({char!r} at character {bad.start()})")
    raise DataFormatError(
        f"{what} {value!r} {problem}, so it cannot be written to a TREC run (whitespace-separated columns); "
        "write a .jsonl run instead, or use ids without whitespace"
    )


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, *, tag: str = "embedkit") -> None:
    """Write `qid Q0 docid rank score tag` lines, atomically; ids or a tag with whitespace are refused first."""
    check_trec_id(tag, "run tag")
    checked: set[str] = set()
    for query_id, scores in run.items():
        check_trec_id(query_id, "query id")
        for doc_id in scores:
            if doc_id not in checked:
                check_trec_id(doc_id, f"document id (query {query_id!r})")
                checked.add(doc_id)
    with atomic_write(path) as handle:
        for query_id, scores in run.items():
            for rank, (doc_id, score) in enumerate(ranked(scores), start=1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def write_jsonl_run(results: Mapping[str, dict], path: str | Path) -> None:
    """One line per query: {"query_id", "query", "hits": [{"id", "score", "rank", "title", "text"}]}."""
    with atomic_write(path) as handle:
        for query_id, payload in results.items():
            record = {"query_id": query_id, **payload}
            line = json.dumps(record, ensure_ascii=False)
            if _SURROGATE.search(line):  # e.g. a query typed as bytes that are not UTF-8
                field, text = find_surrogate(record) or ("", line)
                raise DataFormatError(f"cannot write query {query_id!r}: {surrogate_message(text)}", field=field)
            handle.write(line + "\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC run (6 columns); the run's own scores are kept, ranks are ignored as in trec_eval."""
    path = require_file(path, "run file")
    run: Run = {}
    for line, text in iter_lines(path):
        columns = text.split()
        if not columns:
            continue
        if len(columns) != 6:
            raise DataFormatError(
                f"expected 6 whitespace-separated columns (qid Q0 docid rank score tag), got {len(columns)}",
                path=path, line=line,
            )
        try:
            score = float(columns[4])
        except ValueError:
            raise DataFormatError(f"score '{columns[4]}' is not a number", path=path, line=line) from None
        run.setdefault(columns[0], {})[columns[2]] = score
    if not run:
        raise DataFormatError("empty run file", path=path)
    return run
