"""`embedkit index import`: a FAISS index built by plain faiss over a wiki-18 style corpus (Search-R1 /
FlashRAG layout: row i of the index is line i of the corpus) becomes an embedkit index folder without
re-encoding; searching it gives exactly the rows plain faiss gives, and agents read its passages in one form
whether they search it in process or through `embedkit serve`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit.cli import main
from tests.helpers import MINILM, write_jsonl

TOPICS = [
    ("Aaron", "Aaron is a prophet, high priest, and the brother of Moses in the Abrahamic religions."),
    ("Volcano", "A volcano is a rupture in the crust of a planet through which molten rock escapes."),
    ("Bread", "Bread is a staple food prepared from a dough of flour and water, usually by baking."),
    ("Shirley Temple", "Shirley Temple Black was an American actress who later served as Chief of Protocol."),
    ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
    ("Photosynthesis", "Photosynthesis is the process plants use to turn light into chemical energy."),
    ("Chess", "Chess is a board game for two players played on a checkered board of 64 squares."),
    ("Honey", "Honey is a sweet substance made by honey bees from the nectar of flowers."),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("Penicillin", "Penicillin is a group of antibiotics first discovered by Alexander Fleming."),
    ("Tokyo", "Tokyo is the capital of Japan and one of the most populous cities in the world."),
    ("Violin", "The violin is a wooden string instrument, the smallest in the violin family."),
]
QUERIES = ["who was the brother of Moses?", "largest planet", "what do bees make?", "highest mountain on earth",
           "antibiotic discovered by Fleming", "string instrument"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory, minilm_encoder):
    """wiki-18.jsonl ({"id", "contents"}: quoted title on the first line) and e5_Flat.index-style plain faiss."""
    import faiss

    folder = tmp_path_factory.mktemp("prebuilt")
    records = [{"id": str(i), "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(TOPICS)]
    corpus = write_jsonl(folder / "wiki-18.jsonl", records)
    vectors = minilm_encoder.encode_queries([r["contents"] for r in records])  # any vectors: never re-encoded
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(folder / "Flat.index"))
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    faiss.write_index(hnsw, str(folder / "HNSW.index"))
    return folder, corpus, records


def plain_faiss(path, queries, encoder, k=3):
    import faiss

    index = faiss.read_index(str(path))
    return index.search(encoder.encode_queries(queries), k)


def import_args(folder, corpus, out, *extra):
    return ["index", "import", "--faiss", str(folder / "Flat.index"), "--corpus", str(corpus), "--model", MINILM,
            "--pooling", "mean", "--query-prefix", "", "--out", str(out), "-q", *extra]  # fmt: skip


def test_import_searches_exactly_like_plain_faiss(prebuilt, minilm_encoder, tmp_path, capsys):
    from embedkit.index import Index

    folder, corpus, records = prebuilt
    out = tmp_path / "wiki18"
    assert main(import_args(folder, corpus, out)) == 0
    assert "linked" in capsys.readouterr().out
    assert (out / "index.faiss").is_symlink() and (out / "index.faiss").resolve() == (folder / "Flat.index").resolve()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_docs"] == len(TOPICS) and manifest["metric"] == "ip" and manifest["index_factory"] == "Flat"
    assert manifest["encoder"]["pooling"] == "mean" and manifest["encoder"]["query_prefix"] == ""

    index = Index.load(out)
    scores, rows = plain_faiss(folder / "Flat.index", QUERIES, minilm_encoder)
    hits = index.search(QUERIES, k=3)
    for query_hits, query_rows, query_scores in zip(hits, rows, scores, strict=True):
        assert [h.id for h in query_hits] == [records[r]["id"] for r in query_rows]
        assert [h.score for h in query_hits] == pytest.approx(query_scores.tolist(), abs=1e-6)
        assert [h.contents for h in query_hits] == [records[r]["contents"] for r in query_rows]
    assert hits[0][0].id == "0"  # Aaron, brother of Moses

    copied = tmp_path / "copied"
    assert main(import_args(folder, corpus, copied, "--copy")) == 0
    assert not (copied / "index.faiss").is_symlink()
    assert [[h.id for h in q] for q in Index.load(copied).search(QUERIES, k=3)] == [[h.id for h in q] for q in hits]

    hnsw_out = tmp_path / "hnsw"
    args = import_args(folder, corpus, hnsw_out)
    args[args.index("--faiss") + 1] = str(folder / "HNSW.index")
    assert main(args) == 0
    manifest = json.loads((hnsw_out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["index_factory"] == "HNSW8"
    ef = manifest["search"]["ef_search"]
    import faiss

    plain = faiss.read_index(str(folder / "HNSW.index"))
    plain.hnsw.efSearch = ef
    _, plain_rows = plain.search(minilm_encoder.encode_queries(QUERIES), 3)
    assert [[h.id for h in q] for q in Index.load(hnsw_out).search(QUERIES, k=3)] == \
        [[records[r]["id"] for r in q] for q in plain_rows]  # fmt: skip


def test_imported_index_can_be_updated_without_touching_the_original(prebuilt, minilm_encoder, tmp_path):
    from embedkit.index import Index

    folder, corpus, records = prebuilt
    original = (folder / "Flat.index").read_bytes()
    out = tmp_path / "wiki18"
    assert main(import_args(folder, corpus, out)) == 0
    before = [[h.id for h in q] for q in Index.load(out).search(QUERIES, k=3)]
    new = write_jsonl(tmp_path / "new.jsonl", [{"id": "new", "contents": '"Saturn"\nSaturn is a ringed gas giant planet.'}])
    assert main(["index", "add", str(out), "--corpus", str(new), "-q"]) == 0
    updated = Index.load(out)
    # the link stays segment 0 (a 64 GB wiki-18 Flat index is not copied); the new document is a new segment
    assert len(updated) == len(TOPICS) + 1 and (out / "index.faiss").is_symlink()
    assert updated.search(["the ringed planet Saturn"], k=1)[0][0].id == "new"
    after = [[h.id for h in q if h.id != "new"][:2] for q in updated.search(QUERIES, k=4)]
    assert after == [q[:2] for q in before]
    assert (folder / "Flat.index").read_bytes() == original  # the linked file was read, never written
    assert main(["index", "remove", str(out), "--id", "0"]) == 0
    assert "0" not in [h.id for h in Index.load(out).search(QUERIES[:1], k=3)[0]]


def test_import_refuses_what_cannot_match(prebuilt, tmp_path, capsys):
    folder, corpus, records = prebuilt
    short = write_jsonl(tmp_path / "short.jsonl", records[:-1])
    assert main(import_args(folder, short, tmp_path / "a")) == 2
    assert "11 records but the FAISS index has 12 rows" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing half-written
    assert main(import_args(folder, corpus, tmp_path / "b", "--pooling", "cls")) == 2
    assert "pools with 'mean'" in capsys.readouterr().err
    (tmp_path / "notfaiss.index").write_bytes(b"not a faiss file")
    args = import_args(folder, corpus, tmp_path / "c")
    args[args.index("--faiss") + 1] = str(tmp_path / "notfaiss.index")
    assert main(args) == 2 and "not a FAISS index" in capsys.readouterr().err
    out = tmp_path / "d"
    assert main(import_args(folder, corpus, out)) == 0
    assert main(import_args(folder, corpus, out)) == 2  # exists: needs --overwrite
    assert main(import_args(folder, corpus, out, "--overwrite", "--copy")) == 0


def test_contents_only_corpus_reaches_agents_in_one_form(prebuilt, tmp_path):
    """IndexRetriever (in process) and HttpRetriever (embedkit serve's /retrieve) give the same passages,
    rendered `Doc 1(Title: Aaron) Aaron is …` (the title from the first line, quotes removed)."""
    pytest.importorskip("embedkit.server")
    from agents.http_retriever import HttpRetriever
    from agents.retrieval import IndexRetriever
    from agents.search_agent import render_information
    from embedkit.index import Index
    from embedkit.server.app import create_app
    from embedkit.server.config import ServerConfig
    from tests.helpers import free_port, running_server

    folder, corpus, _ = prebuilt
    out = tmp_path / "wiki18"
    assert main(import_args(folder, corpus, out)) == 0
    local = IndexRetriever(Index.load(out)).retrieve(QUERIES[:2], k=2)
    port = free_port()
    with running_server(create_app(ServerConfig(index=str(out), port=port)), port) as base:
        remote = HttpRetriever(base).retrieve(QUERIES[:2], k=2)
    assert [[(p.id, p.title, p.text) for p in q] for q in local] == [[(p.id, p.title, p.text) for p in q] for q in remote]
    assert [p.score for p in local[0]] == pytest.approx([p.score for p in remote[0]], abs=1e-5)
    block = render_information(local[0])
    assert block.startswith("\n\n<information>Doc 1(Title: Aaron) Aaron is a prophet") and block == render_information(remote[0])
    assert np.isfinite(local[0][0].score) and local[0][0].rank == 1
