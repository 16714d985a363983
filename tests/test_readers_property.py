"""Property tests of the corpus, queries and qrels readers on generated files.

Ids and texts are arbitrary unicode (separators, quotes, U+2028, NUL, ...), files come with or without a BOM
and with LF or CRLF line endings. Every file is either read exactly or refused with a `DataFormatError`
naming the file and the line (always refused when an id holds a control character: NUL, tab, LF, ...); damaged variants (stray bytes, quotes, tabs, surrogate escapes) never raise
anything else. A few examples go through the CLI, which must exit 0 or 2 and never print a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.data import iter_documents, load_qrels, load_queries
from embedkit.errors import DataFormatError

FAST = settings(max_examples=int(__import__("os").environ.get("HD_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(min_size=1, max_size=10)
texts = st.text(max_size=30)
line_ending = st.sampled_from(["\n", "\r\n"])
# Whole-file problems that have no line to name.
FILE_LEVEL = ("has no documents", "no queries in file", "no judgements", "damaged gzip", "not found")
STRAY = [b"\xff", b"\xc3", b"\t", b'"', b"\n", b"\r", b"\\ud800", b"\\", b"{", b"[", b",", b"\xef\xbb\xbf", b"\x00",
         b" ", b'"\t"']


def encode_file(text: str, bom: bool) -> bytes:
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


def delimited(rows: list[list[str]], delimiter: str, ending: str) -> str:
    """CSV-style rows: a field holding the delimiter, a quote, CR or LF is quoted (`csv.writer` leaves a lone
    CR unquoted when the line ending is LF, which no reader can tell from a CRLF ending)."""
    def field(value: str) -> str:
        special = any(char in value for char in (delimiter, '"', "\r", "\n"))
        return '"' + value.replace('"', '""') + '"' if special else value

    return "".join(delimiter.join(map(field, map(str, row))) + ending for row in rows)


def read_or_refusal(read: Callable[[Path], Any], path: Path) -> Any:
    """What `read` returns, or the DataFormatError it raised (checked to name the file and the line)."""
    try:
        return read(path)
    except DataFormatError as error:
        message = str(error)
        assert str(path) in message, message
        assert ", line " in message or any(part in message for part in FILE_LEVEL), message
        return error


def with_file(data: bytes, suffix: str, read: Callable[[Path], Any]) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        return read_or_refusal(read, path)


def mutate(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for position, stray in edits:
        at = position % (len(data) + 1)
        data = data[:at] + stray + data[at:]
    return data


def has_control(values: list[str]) -> bool:
    """An id holding a control character: readers refuse it (it would break TREC runs and TSV files)."""
    return any(char <= "\x1f" or "\x7f" <= char <= "\x9f" for value in values for char in value)


def read_corpus(path: Path) -> list[tuple[str, str, str]]:
    return [(d.id, d.title, d.text) for d in iter_documents(path)]


documents = st.lists(st.tuples(ids, texts, texts), min_size=1, max_size=6, unique_by=lambda d: d[0])
edits = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(STRAY)), min_size=1, max_size=3)


def corpus_file(docs: list[tuple[str, str, str]], fmt: str, ending: str, ascii_only: bool) -> str:
    if fmt == ".jsonl":
        return "".join(json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=ascii_only) + ending
                       for i, t, x in docs)
    return delimited([["id", "title", "text"], *map(list, docs)], "," if fmt == ".csv" else "\t", ending)


@FAST
@given(docs=documents, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), ending=line_ending, bom=st.booleans(),
       ascii_only=st.booleans())
def test_corpus_is_read_exactly(docs, fmt, ending, bom, ascii_only) -> None:
    data = encode_file(corpus_file(docs, fmt, ending, ascii_only), bom)
    result = with_file(data, fmt, read_corpus)
    if has_control([doc[0] for doc in docs]):
        assert isinstance(result, DataFormatError)
    elif fmt == ".tsv" and any("\n" in field for doc in docs for field in doc):
        assert isinstance(result, DataFormatError)  # TSV records are one line each
        assert "not closed on this line" in str(result) or "expected 3 columns" in str(result)
    else:
        assert result == docs


@FAST
@given(docs=documents, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), ending=line_ending, bom=st.booleans(),
       damage=edits)
def test_damaged_corpus_is_read_or_refused(docs, fmt, ending, bom, damage) -> None:
    data = mutate(encode_file(corpus_file(docs, fmt, ending, False), bom), damage)
    result = with_file(data, fmt, read_corpus)
    assert isinstance(result, (list, DataFormatError))


queries = st.lists(st.tuples(ids, texts), min_size=1, max_size=6, unique_by=lambda q: q[0])


def queries_file(items: list[tuple[str, str]], fmt: str, ending: str) -> str:
    if fmt == ".jsonl":
        return "".join(json.dumps({"_id": i, "text": x}, ensure_ascii=False) + ending for i, x in items)
    return delimited([["id", "text"], *map(list, items)], "," if fmt == ".csv" else "\t", ending)


@FAST
@given(items=queries, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), ending=line_ending, bom=st.booleans())
def test_queries_are_read_exactly(items, fmt, ending, bom) -> None:
    result = with_file(encode_file(queries_file(items, fmt, ending), bom), fmt, load_queries)
    if has_control([item[0] for item in items]) or fmt == ".tsv" and any("\n" in field for item in items
                                                                          for field in item):
        assert isinstance(result, DataFormatError)
    else:
        assert result == dict(items)


@FAST
@given(items=queries, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), ending=line_ending, damage=edits)
def test_damaged_queries_are_read_or_refused(items, fmt, ending, damage) -> None:
    result = with_file(mutate(encode_file(queries_file(items, fmt, ending), False), damage), fmt, load_queries)
    assert isinstance(result, (dict, DataFormatError))


judgements = st.lists(st.tuples(ids, ids, st.integers(-2, 3)), min_size=1, max_size=8)
trec_ids = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=10)


def expected_qrels(rows: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for query_id, doc_id, grade in rows:
        qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def conflicting(rows: list[tuple[str, str, int]]) -> bool:
    """One document judged twice for a query with different grades: refused (which grade counts?)."""
    return len({(query, doc, grade) for query, doc, grade in rows}) > len({(query, doc) for query, doc, _ in rows})


@FAST
@given(rows=judgements, ending=line_ending, bom=st.booleans())
def test_beir_qrels_are_read_exactly(rows, ending, bom) -> None:
    text = delimited([["query-id", "corpus-id", "score"], *map(list, rows)], "\t", ending)
    result = with_file(encode_file(text, bom), ".tsv", load_qrels)
    if has_control([field for row in rows for field in row[:2]]) or conflicting(rows):
        assert isinstance(result, DataFormatError)
    else:
        assert result == expected_qrels(rows)


@FAST
@given(rows=st.lists(st.tuples(trec_ids, trec_ids, st.integers(-2, 3)), min_size=1, max_size=8),
       ending=line_ending, bom=st.booleans())
def test_trec_qrels_are_read_exactly(rows, ending, bom) -> None:
    text = "".join(f"{q} 0 {d} {r}{ending}" for q, d, r in rows)
    result = with_file(encode_file(text, bom), ".txt", load_qrels)
    header = {q.lower() for q, _, _ in rows[:1]} | {"0", rows[0][1].lower(), str(rows[0][2])}
    if header & {"query-id", "corpus-id", "score", "qid", "docid", "query_id", "doc_id", "corpus_id", "relevance"}:
        return  # a first line that looks like a header is skipped, by design
    if conflicting(rows):
        assert isinstance(result, DataFormatError) and "keep one judgement" in str(result)
    else:
        assert result == expected_qrels(rows)


@FAST
@given(rows=judgements, damage=edits)
def test_damaged_qrels_are_read_or_refused(rows, damage) -> None:
    text = delimited([["query-id", "corpus-id", "score"], *map(list, rows)], "\t", "\n")
    result = with_file(mutate(text.encode(), damage), ".tsv", load_qrels)
    assert isinstance(result, (dict, DataFormatError))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedkit", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@CLI
@given(rows=judgements, damage=edits)
def test_cli_eval_on_damaged_qrels_never_shows_a_traceback(rows, damage) -> None:
    text = delimited([["query-id", "corpus-id", "score"], *map(list, rows)], "\t", "\n")
    with tempfile.TemporaryDirectory() as folder:
        qrels, run = Path(folder) / "qrels.tsv", Path(folder) / "run.trec"
        qrels.write_bytes(mutate(text.encode(), damage))
        run.write_text("q1 Q0 d1 1 1.0 t\n", encoding="utf-8")
        result = run_cli("eval", "--run", str(run), "--qrels", str(qrels))
    assert result.returncode in (0, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
@CLI
@given(docs=documents, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), damage=edits)
def test_cli_index_build_on_damaged_corpus_never_shows_a_traceback(docs, fmt, damage) -> None:
    data = mutate(encode_file(corpus_file(docs, fmt, "\n", False), False), damage)
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / f"corpus{fmt}"
        corpus.write_bytes(data)
        result = run_cli("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", str(corpus),
                         "--out", str(Path(folder) / "idx"))
    assert result.returncode in (0, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 2:
        assert result.stderr.startswith("embedkit: error: "), result.stderr[-2000:]


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bm25")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": text}) + "\n"
                              for i, text in enumerate(["cats purr", "dogs bark", "faiss searches vectors"])))
    result = run_cli("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", str(corpus),
                     "--out", str(folder / "idx"))
    assert result.returncode == 0, result.stderr
    return folder / "idx"


@pytest.mark.slow
@CLI
@given(items=queries, fmt=st.sampled_from([".jsonl", ".tsv", ".csv"]), damage=edits)
def test_cli_search_on_damaged_queries_never_shows_a_traceback(bm25_index, items, fmt, damage) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"queries{fmt}"
        path.write_bytes(mutate(encode_file(queries_file(items, fmt, "\n"), False), damage))
        result = run_cli("search", str(bm25_index), "--queries", str(path), "-o", str(Path(folder) / "run.jsonl"))
    assert result.returncode in (0, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 2:
        assert result.stderr.startswith("embedkit: error: "), result.stderr[-2000:]
