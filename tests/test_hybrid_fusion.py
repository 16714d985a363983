"""Fusion methods on hand-made runs, `embedkit fuse` on run files, and live hybrid search (dense + BM25)."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from embedkit.cli import main
from embedkit.data import iter_documents, read_run, write_trec_run
from embedkit.errors import EmbedkitError
from embedkit.hybrid import FusionConfig, HybridSearcher, fuse_runs, fuse_scores

DENSE = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}, "q2": {"x": 0.5}}
LEXICAL = {"q1": {"c": 12.0, "a": 6.0, "d": 3.0}}


def test_rrf_sums_reciprocal_ranks():
    fused = fuse_runs([DENSE, LEXICAL], FusionConfig(method="rrf", rrf_k=60))
    assert fused["q1"] == pytest.approx({"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63})
    assert list(fused["q1"]) == ["a", "c", "b", "d"]  # best first
    assert fused["q2"] == pytest.approx({"x": 1 / 61})  # a query only one run has


def test_rrf_weights_depth_and_cut():
    weighted = fuse_scores([DENSE["q1"], LEXICAL["q1"]], FusionConfig(weights=(1.0, 3.0)))
    assert list(weighted)[0] == "c"
    shallow = fuse_scores([DENSE["q1"], LEXICAL["q1"]], FusionConfig(depth=1))
    assert shallow == pytest.approx({"a": 1 / 61, "c": 1 / 61})
    assert len(fuse_runs([DENSE, LEXICAL], k=2)["q1"]) == 2


def test_minmax_interpolation_with_alpha():
    fused = fuse_scores([DENSE["q1"], LEXICAL["q1"]], FusionConfig(method="interpolate", alpha=0.7))
    dense = {"a": 1.0, "b": 0.875, "c": 0.0}
    lexical = {"c": 1.0, "a": 1 / 3, "d": 0.0}
    expected = {doc: 0.7 * dense.get(doc, 0.0) + 0.3 * lexical.get(doc, 0.0) for doc in "abcd"}
    assert fused == pytest.approx(expected)
    assert list(fused) == ["a", "b", "c", "d"]


def test_zscore_interpolation_gives_missing_documents_the_floor():
    fused = fuse_scores([{"a": 3.0, "b": 1.0}, {"b": 5.0, "c": 5.0}],
                        FusionConfig(method="interpolate", normalization="zscore"))
    # first system: a=+1, b=-1; second: constant → 0 for both, so a (missing there) gets one unit below, -1;
    # c missing in the first → its floor -1
    assert fused == pytest.approx({"a": 0.5 * 1 + 0.5 * -1, "b": 0.5 * -1 + 0.5 * 0, "c": 0.5 * -1 + 0.5 * 0})
    assert all(math.isfinite(v) for v in fused.values())


def test_fusion_config_is_validated():
    with pytest.raises(ValidationError, match="unknown fusion method"):
        FusionConfig(method="borda")
    with pytest.raises(ValidationError):
        FusionConfig(alpha=1.5)
    with pytest.raises(EmbedkitError, match="alpha"):
        fuse_runs([DENSE, LEXICAL, DENSE], FusionConfig(alpha=0.5))
    with pytest.raises(EmbedkitError, match="at least two"):
        fuse_runs([DENSE])


def test_fuse_cli(tmp_path, capsys):
    a, b, out = tmp_path / "a.trec", tmp_path / "b.trec", tmp_path / "fused.trec"
    write_trec_run(DENSE, a)
    write_trec_run(LEXICAL, b)
    assert main(["fuse", str(a), str(b), "--method", "rrf", "-o", str(out)]) == 0
    fused = read_run(out)
    assert fused["q1"] == pytest.approx(fuse_runs([read_run(a), read_run(b)])["q1"], abs=1e-6)
    assert out.read_text().splitlines()[0].split() == ["q1", "Q0", "a", "1", f"{1 / 61 + 1 / 62:.6f}", "fused"]
    assert main(["fuse", str(a), str(b), "--fusion", "interpolate", "--alpha", "0.7", "-k", "1", "-o", str(out)]) == 0
    assert list(read_run(out)["q1"]) == ["a"]
    assert main(["fuse", str(a), "-o", str(out)]) == 2
    assert main(["fuse", str(a), str(tmp_path / "missing.trec"), "-o", str(out)]) == 2
    assert main(["fuse", str(a), str(b), "--alpha", "2", "-o", str(out)]) == 2
    assert "alpha" in capsys.readouterr().err


@pytest.fixture
def dense_and_bm25(small_corpus, tmp_path, minilm_encoder):
    from embedkit.index import build_dense_index
    from embedkit.lexical import BM25Settings, build_bm25_index

    dense = build_dense_index(iter_documents(small_corpus), minilm_encoder, tmp_path / "dense", quiet=True)
    bm25 = build_bm25_index(iter_documents(small_corpus), tmp_path / "bm25", BM25Settings(backend="bm25s"))
    return dense, bm25


def test_live_hybrid_search_fuses_both_indexes(dense_and_bm25, minilm_encoder):
    from embedkit.index import Index

    dense = Index.load(dense_and_bm25[0], encoder=minilm_encoder)
    bm25 = Index.load(dense_and_bm25[1])
    searcher = HybridSearcher([dense, bm25], FusionConfig(method="rrf"))
    query = "kitten purring"  # a paraphrase: dense finds the cats; BM25 only matches the stem "purr"
    hits = searcher.search([query], k=3)[0]
    assert hits[0].id == "d1" and hits[0].title == "Cats" and hits[0].rank == 1
    expected = fuse_scores([{h.id: h.score for h in dense.search(query, 6)[0]},
                            {h.id: h.score for h in bm25.search(query, 6)[0]}])
    assert [h.id for h in hits] == list(expected)[:3]
    run = searcher.search_run({"q": "loyal barking pets"}, k=2)
    assert next(iter(run["q"])) == "d2"


def test_search_cli_hybrid(dense_and_bm25, tmp_path, capsys):
    dense, bm25 = dense_and_bm25
    out = tmp_path / "hybrid.jsonl"
    assert main(["search", "--hybrid", str(dense), str(bm25), "molten rock eruption", "--fusion", "interpolate",
                 "--alpha", "0.5", "-k", "2", "--output", str(out), "-q", "--device", "cpu"]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["hits"][0]["id"] == "d4" and len(record["hits"]) == 2
    assert main(["search", "--hybrid", str(dense), str(bm25), "a", "b"]) == 2
