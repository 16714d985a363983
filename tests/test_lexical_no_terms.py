"""Issue 22, item 8 (bm25s): a corpus or a query without a single indexable term, from the command line.

bm25s died building a corpus of stopwords, empty and one-letter texts (`ValueError: max() arg is an empty
sequence`); pyserini builds it and finds nothing, so bm25s must too. bm25s also printed its DEBUG/INFO lines
("Building index from tokens", "The query is empty") on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.data import read_run
from embedkit.lexical.java import java_available
from tests.test_index_integrity import embedkit

pytestmark = pytest.mark.slow  # every test starts the CLI

NO_TERMS = ["the of and", "", "!!! ... ???", "a", "   "]
BACKENDS = ["bm25s", pytest.param("pyserini", marks=[
    pytest.mark.skipif(not java_available(), reason="pyserini needs a Java 21+ runtime"), pytest.mark.needs_java])]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def build(corpus: Path, out: Path, backend: str):
    return embedkit("index", "build", "--kind", "bm25", "--backend", backend, "--corpus", corpus, "--out", out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_corpus_without_terms_builds_and_finds_nothing(tmp_path, backend) -> None:
    texts = NO_TERMS + (["x", "b c"] if backend == "bm25s" else [])  # bm25s drops one-letter words, Lucene not
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    built = build(corpus, tmp_path / "idx", backend)
    assert built.returncode == 0, built.stderr
    assert f"{len(texts)} documents" in built.stdout
    assert "Traceback" not in built.stderr and "DEBUG" not in built.stderr
    verified = embedkit("index", "verify", tmp_path / "idx")
    assert verified.returncode == 0, verified.stderr
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "the"}, {"_id": "q2", "text": "cats"},
                                                       {"_id": "q3", "text": ""}, {"_id": "q4", "text": "x"}])
    searched = embedkit("search", tmp_path / "idx", "--queries", queries, "-o", tmp_path / "run.jsonl")
    assert searched.returncode == 0, searched.stderr
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [line["query_id"] for line in lines] == ["q1", "q2", "q3", "q4"]
    assert all(line["hits"] == [] for line in lines), lines


def test_queries_without_terms_get_no_hits_on_a_normal_bm25s_index(tmp_path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "cats purr"},
                                                     {"_id": "d2", "text": "dogs bark loudly"}])
    assert build(corpus, tmp_path / "idx", "bm25s").returncode == 0
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"_id": "q1", "text": "the of"}, {"_id": "q2", "text": ""}, {"_id": "q3", "text": "cats"},
        {"_id": "q4", "text": "?!"}, {"_id": "q5", "text": "x y z"}, {"_id": "q6", "text": "dogs"}])
    searched = embedkit("search", tmp_path / "idx", "--queries", queries, "-o", tmp_path / "run.trec")
    assert searched.returncode == 0, searched.stderr
    assert "bm25s" not in searched.stderr, searched.stderr  # no "INFO bm25s: The query is empty" noise
    run = read_run(tmp_path / "run.trec")
    assert {query: list(scores) for query, scores in run.items()} == {"q3": ["d1"], "q6": ["d2"]}
    one = embedkit("search", tmp_path / "idx", "the")
    assert one.returncode == 0 and "d1" not in one.stdout and "d2" not in one.stdout, one.stdout


def test_bm25s_build_of_an_ordinary_corpus_logs_nothing(tmp_path) -> None:
    """`embedkit index build --kind bm25 --backend bm25s --quiet` printed `DEBUG bm25s: Building index from tokens`
    on every build; only the one-line summary remains (`embedkit -v` still shows bm25s's debug lines)."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "Cats", "text": "cats purr softly"},
                                                     {"_id": "d2", "text": "dogs bark loudly"}])
    built = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                     "--out", tmp_path / "idx", "--quiet")
    assert built.returncode == 0, built.stderr
    assert "DEBUG" not in built.stderr and "bm25s" not in built.stderr, built.stderr
    assert built.stdout.startswith(f"wrote {tmp_path / 'idx'}: 2 documents, BM25 (bm25s"), built.stdout
    assert len(built.stdout.splitlines()) == 1, built.stdout
