"""BM25 index kind: bm25s always, pyserini when a Java 21+ runtime exists (one JVM per test process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embedkit.cli import main
from embedkit.data import iter_documents, read_run
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index import Index
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical.java import java_available

needs_java = pytest.mark.skipif(not java_available(), reason="pyserini needs a Java 21+ runtime")


def lucene_bm25(tf: int, df: int, n_docs: int, doc_len: int, avg_len: float, k1: float, b: float) -> float:
    """Lucene's BM25 (no (k1+1) factor): idf · tf / (tf + k1 · (1 − b + b · dl/avgdl))."""
    idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + k1 * (1 - b + b * doc_len / avg_len))


@pytest.fixture
def term_corpus(tmp_path: Path) -> Path:
    # Words that stemmers and stopword lists leave alone, so token counts are known.
    records = [{"_id": "a", "text": "alpha beta"}, {"_id": "b", "text": "alpha gamma gamma"}, {"_id": "c", "text": "delta"}]
    path = tmp_path / "terms.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(corpus: Path, out: Path, **settings) -> Index:
    build_bm25_index(iter_documents(corpus), out, BM25Settings(**settings))
    return Index.load(out)


def test_bm25s_scores_follow_lucene_bm25(term_corpus, tmp_path):
    index = build(term_corpus, tmp_path / "idx", backend="bm25s", k1=1.2, b=0.75)
    hits = index.search(["gamma", "alpha"], k=5)
    assert [h.id for h in hits[0]] == ["b"]
    assert hits[0][0].score == pytest.approx(lucene_bm25(2, 1, 3, 3, 2.0, 1.2, 0.75), rel=1e-4)
    assert [h.id for h in hits[1]] == ["a", "b"]  # shorter document first
    assert hits[1][0].score == pytest.approx(lucene_bm25(1, 2, 3, 2, 2.0, 1.2, 0.75), rel=1e-4)
    assert index.search(["zeta", ""], k=3) == [[], []]  # no indexed term: no hits, not zero-score filler


def test_cli_build_and_search_bm25s(small_corpus, tmp_path, capsys):
    out = tmp_path / "bm25"
    assert main(["index", "build", "--kind", "bm25", "--backend", "bm25s", "--k1", "1.2", "--b", "0.75",
                 "--corpus", str(small_corpus), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["num_docs"] == 6
    assert manifest["settings"]["backend"] == "bm25s"
    assert (manifest["settings"]["k1"], manifest["settings"]["b"], manifest["settings"]["fields"]) == (1.2, 0.75, None)
    index = Index.load(out)
    hit = index.search("dogs playing fetch", k=3)[0][0]
    assert (hit.id, hit.title, hit.rank) == ("d2", "Dogs", 1) and "bark" in hit.text
    run_path = tmp_path / "run.trec"
    assert main(["search", str(out), "purring cats", "--output", str(run_path), "-q"]) == 0
    assert next(iter(read_run(run_path)["q1"])) == "d1"
    with pytest.raises(EmbedkitError, match="rebuild"):
        index.search(["cats"], k=1, k1=2.0)  # bm25s bakes k1/b in


def test_bm25_build_refuses_bad_input(small_corpus, tmp_path, capsys):
    out = tmp_path / "bm25"
    args = ["index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", str(small_corpus), "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--fields", "contents=1", "title=1"]) == 2
    assert "pyserini" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--b", "1.5"]) == 2 and "b" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--model", "some/model"]) == 2
    assert not list(tmp_path.glob("bm25.tmp-*")), "no half-written index left behind"


def test_damaged_bm25_index_is_refused(small_corpus, tmp_path):
    index = build(small_corpus, tmp_path / "idx", backend="bm25s")
    victim = next((index.path / "bm25s").glob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match="damaged"):
        Index.load(index.path)


@pytest.mark.slow
@needs_java
@pytest.mark.needs_java
def test_pyserini_matches_lucene_bm25_and_bm25s(term_corpus, small_corpus, tmp_path):
    index = build(term_corpus, tmp_path / "lucene", backend="pyserini", k1=1.2, b=0.75)
    assert index.manifest.backend_info.java_version >= 21
    hits = index.search(["gamma", "alpha", ""], k=5)
    assert [h.id for h in hits[0]] == ["b"] and [h.id for h in hits[1]] == ["a", "b"] and hits[2] == []
    assert hits[0][0].score == pytest.approx(lucene_bm25(2, 1, 3, 3, 2.0, 1.2, 0.75), rel=1e-3)
    # Lucene applies BM25 at query time, so k1/b can be changed per search.
    changed = index.search(["gamma"], k=1, k1=0.5, b=0.0)[0][0].score
    assert changed == pytest.approx(lucene_bm25(2, 1, 3, 3, 2.0, 0.5, 0.0), rel=1e-3)

    lucene = build(small_corpus, tmp_path / "small-lucene", backend="pyserini")
    embedded = build(small_corpus, tmp_path / "small-bm25s", backend="bm25s")
    for query in ("cats hunting mice", "baking bread with yeast", "fast vector similarity search"):
        a, b = lucene.search(query, k=3)[0], embedded.search(query, k=3)[0]
        assert a[0].id == b[0].id and a[0].title and a[0].text
        assert a[0].score == pytest.approx(b[0].score, rel=0.02)


@needs_java
@pytest.mark.needs_java
def test_pyserini_two_fields_via_cli(small_corpus, tmp_path, capsys):
    out = tmp_path / "mf"
    assert main(["index", "build", "--kind", "bm25", "--backend", "pyserini", "--fields", "contents=1.0 title=3.0",
                 "--corpus", str(small_corpus), "--out", str(out)]) == 0
    assert "separate fields" in capsys.readouterr().out
    index = Index.load(out)
    assert index.manifest.settings.fields == {"contents": 1.0, "title": 3.0}
    # "faiss" appears in d3's title and text; with the title weighted 3x its score rises above a one-field index
    one_field = build(small_corpus, tmp_path / "flat", backend="pyserini")
    assert index.search("faiss", k=1)[0][0].id == "d3"
    assert index.search("faiss", k=1)[0][0].score > one_field.search("faiss", k=1)[0][0].score
