"""Ranked results ("runs"): TREC 6-column files and jsonl with texts.

A TREC run is whitespace-separated, so ids and tags that hold whitespace or a control character cannot be
written into one: `write_trec_run` refuses them (use a jsonl run instead) rather than write a file no reader can
parse, and it refuses NaN or infinite scores. `read_run` refuses the same things, and a document listed twice
for one query (which of its scores would count?).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from embedkit.data._files import (
    CONTROL_CHARACTERS,
    check_id,
    control_character_problem,
    find_surrogate,
    iter_lines,
    require_file,
    surrogate_message,
)
from embedkit.errors import DataFormatError
from embedkit.io import atomic_write

Run = dict[str, dict[str, float]]

# Whitespace as str.split() sees it (what every TREC reader splits on), control characters (NUL, ...) and lone
# surrogates (not UTF-8).
_NOT_TREC_SAFE = re.compile(rf"[\s{CONTROL_CHARACTERS}\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A decimal number as trec_eval's atof reads it; float() also takes "nan", "inf", "1_000" and non-ASCII digits.
_SCORE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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
        if "\ud800" <= char <= "\udfff":
            problem = f"holds a lone surrogate (U+{ord(char):04X})"
        elif control_character_problem(char):  # the first unsafe character, so also the first control one
            problem = control_character_problem(value) or ""
        else:
            problem = f"holds whitespace ({char!r} at character {bad.start()})"
    raise DataFormatError(
        f"{what} {value!r} {problem}, so it cannot be written to a TREC run (whitespace-separated columns); "
        "write a .jsonl run instead, or use ids without whitespace"
    )


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, *, tag: str = "embedkit") -> None:
    """Write `qid Q0 docid rank score tag` lines, atomically; ids or a tag with whitespace and scores that are
    NaN or infinite are refused first."""
    check_trec_id(tag, "run tag")
    checked: set[str] = set()
    for query_id, scores in run.items():
        check_trec_id(query_id, "query id")
        for doc_id, score in scores.items():
            if doc_id not in checked:
                check_trec_id(doc_id, f"document id (query {query_id!r})")
                checked.add(doc_id)
            if not math.isfinite(score):
                raise DataFormatError(f"score {score} of document {doc_id!r} for query {query_id!r} is not a finite "
                                      "number; a TREC run needs real scores")
    with atomic_write(path) as handle:
        for query_id, scores in run.items():
            hits = ranked(scores)
            texts = score_texts([score for _, score in hits])
            for rank, ((doc_id, _), text) in enumerate(zip(hits, texts, strict=True), start=1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {text} {tag}\n")


def score_texts(scores: Sequence[float]) -> list[str]:
    """One query's scores (best first) as written to a TREC run: 6 decimals, or as many more as it takes to keep
    different scores different, since trec_eval re-sorts equal scores by document id (RRF scores of deep ranks
    differ in the 7th decimal)."""
    for places in range(6, 18):
        texts = [f"{score:.{places}f}" for score in scores]
        if all(texts[i] != texts[i + 1] or scores[i] == scores[i + 1] for i in range(len(texts) - 1)):
            return texts
    return [repr(float(score)) for score in scores]  # shortest text that reads back as the same float


def write_jsonl_run(results: Mapping[str, dict], path: str | Path) -> None:
    """One line per query: {"query_id", "query", "hits": [{"id", "score", "rank", "title", "text"}]}."""
    with atomic_write(path) as handle:
        for query_id, payload in results.items():
            record = {"query_id": query_id, **payload}
            try:
                line = json.dumps(record, ensure_ascii=False, allow_nan=False)
            except ValueError:  # a NaN or infinite score: the line would not be JSON
                raise DataFormatError(f"cannot write query {query_id!r}: a score is NaN or infinite") from None
            if _SURROGATE.search(line):  # e.g. a query typed as bytes that are not UTF-8
                field, text = find_surrogate(record) or ("", line)
                raise DataFormatError(f"cannot write query {query_id!r}: {surrogate_message(text)}", field=field)
            handle.write(line + "\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC run (6 columns); the run's own scores are kept, ranks are ignored as in trec_eval."""
    path = require_file(path, "run file")
    run: Run = {}
    first_line: dict[tuple[str, str], int] = {}
    for line, text in iter_lines(path):
        columns = text.split()
        if not columns:
            continue
        if len(columns) != 6:
            raise DataFormatError(
                f"expected 6 whitespace-separated columns (qid Q0 docid rank score tag), got {len(columns)}",
                path=path, line=line,
            )
        query_id = check_id(columns[0], what="query id", path=path, line=line)
        doc_id = check_id(columns[2], what="document id", path=path, line=line)
        score = _score(columns[4], path=path, line=line)
        scores = run.setdefault(query_id, {})
        if doc_id in scores:
            raise DataFormatError(f"document '{doc_id}' is listed twice for query '{query_id}' (first on line "
                                  f"{first_line[query_id, doc_id]}); which score counts is undefined", path=path,
                                  line=line)
        scores[doc_id] = score
        first_line[query_id, doc_id] = line
    if not run:
        raise DataFormatError("empty run file", path=path)
    return run


def _score(text: str, *, path: Path, line: int) -> float:
    """A run's score column as a finite float; "nan", "inf", "1e999" and "1_0" are refused."""
    if not _SCORE.fullmatch(text):
        lowered = text.lower().lstrip("+-")
        if lowered in ("nan", "inf", "infinity"):
            raise DataFormatError(f"score '{text}' is not a finite number; fusion and evaluation need real scores",
                                  path=path, line=line)
        raise DataFormatError(f"score '{text}' is not a number", path=path, line=line)
    score = float(text)
    if not math.isfinite(score):
        raise DataFormatError(f"score '{text}' is too large for a 64-bit float", path=path, line=line)
    return score
