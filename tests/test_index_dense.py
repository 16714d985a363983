"""Dense index build, load and search with the real bundled MiniLM and real FAISS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit.data import iter_documents
from embedkit.errors import EmbedkitError, IndexFormatError, ModelMismatchError
from embedkit.index import Index, IndexManifest, build_dense_index, write_dense_index


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, minilm_encoder) -> Path:
    from tests.helpers import write_jsonl

    folder = tmp_path_factory.mktemp("dense")
    corpus = write_jsonl(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice."},
        {"_id": "d2", "title": "Dogs", "text": "Dogs are loyal companions that bark and love to play fetch."},
        {"_id": "d3", "title": "FAISS", "text": "FAISS is a library for fast similarity search over dense vectors."},
        {"_id": "d4", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
    ])
    return build_dense_index(iter_documents(corpus), minilm_encoder, folder / "index", quiet=True, corpus=str(corpus))


def test_search_ranks_the_matching_document_first(built_index: Path, minilm_encoder) -> None:
    index = Index.load(built_index, encoder=minilm_encoder)
    results = index.search(["a kitten hunting a mouse", "nearest neighbour vector search library"], k=2)
    assert [hits[0].id for hits in results] == ["d1", "d3"]
    assert results[0][0].title == "Cats" and results[0][0].rank == 1 and results[0][1].rank == 2
    assert results[0][0].score > results[0][1].score
    assert index.docstore.get("d4").text.startswith("A volcano")
    assert index.search_run({"q": "barking pet"}, k=1) == {"q": {"d2": pytest.approx(results[0][0].score, abs=1.0)}}


def test_manifest_records_how_to_query(built_index: Path, minilm_encoder) -> None:
    manifest = IndexManifest.load(built_index)
    assert manifest.kind == "dense" and manifest.num_docs == 4 and manifest.index_factory == "Flat"
    assert manifest.encoder.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest.encoder.fingerprint == minilm_encoder.fingerprint
    assert manifest.encoder.pooling == "mean" and manifest.encoder.dim == 384 and manifest.encoder.normalize
    assert set(manifest.files) == {"index.faiss", "docstore.sqlite"}
    assert manifest.history[0].action == "build"
    assert not list(built_index.parent.glob("*.tmp-*"))


def test_search_equals_exact_inner_product(built_index: Path, minilm_encoder) -> None:
    index = Index.load(built_index, encoder=minilm_encoder)
    docs = [doc for _, doc in index.docstore.iter_documents()]
    doc_vectors = minilm_encoder.encode_documents(docs)
    query_vector = minilm_encoder.encode_queries(["volcanic eruption"])
    expected = np.argsort(-(doc_vectors @ query_vector[0]))
    hits = index.search_vectors(query_vector, k=4)[0]
    assert [hit.id for hit in hits] == [docs[i].id for i in expected]


@pytest.mark.parametrize("factory", ["HNSW8", "IVF2,Flat", "SQ8"])
def test_any_factory_string(tmp_path: Path, factory: str, minilm_encoder) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(64, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    from embedkit.data import Document

    documents = [Document(id=f"v{i}", text=f"text {i}") for i in range(64)]
    out = write_dense_index(tmp_path / "idx", vectors, documents, minilm_encoder.spec, factory=factory, train_sample=64)
    index = Index.load(out, encoder=minilm_encoder)
    hits = index.search_vectors(vectors[:5], k=1, **({"nprobe": 2} if factory.startswith("IVF") else {}))
    assert [h[0].id for h in hits] == ["v0", "v1", "v2", "v3", "v4"]


def test_bad_factory_and_untrainable_ivf(tmp_path: Path, minilm_encoder) -> None:
    from embedkit.data import Document

    vectors = np.eye(8, 384, dtype=np.float32)
    documents = [Document(id=str(i), text="x") for i in range(8)]
    with pytest.raises(EmbedkitError, match="invalid FAISS index factory"):
        write_dense_index(tmp_path / "a", vectors, documents, minilm_encoder.spec, factory="Nonsense123")
    with pytest.raises(EmbedkitError, match="cannot train the index"):
        write_dense_index(tmp_path / "b", vectors, documents, minilm_encoder.spec, factory="IVF64,Flat")
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written


def test_failed_build_leaves_nothing(tmp_path: Path, minilm_encoder) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "1", "text": "fine"}\n{"_id": "1", "text": "duplicate"}\n')
    with pytest.raises(EmbedkitError, match="duplicate"):
        build_dense_index(iter_documents(corpus), minilm_encoder, tmp_path / "out", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["corpus.jsonl"]


def test_damaged_and_foreign_folders_are_refused(built_index: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="not an embedkit index"):
        Index.load(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in built_index.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    faiss_file = copy / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[: faiss_file.stat().st_size // 2])
    with pytest.raises(IndexFormatError, match="index.faiss has .* bytes, the manifest recorded"):
        Index.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="damaged"):
        Index.load(copy)


def test_queries_need_the_index_model(built_index: Path, tmp_path: Path, minilm_encoder) -> None:
    from embedkit.errors import ModelUnavailableError

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in built_index.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder"]["model"] = "no-such-org/no-such-model"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelUnavailableError, match="no-such-org/no-such-model"):
        Index.load(copy).search("anything")
    manifest["encoder"]["fingerprint"] = "0000000000000000"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Index.load(copy, encoder=minilm_encoder)
