"""The torch exact-search backend agrees with FAISS exact search (tested on CPU; the same code runs on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.data.corpus import Document
from embedkit.encoding import EncoderSpec
from embedkit.index import Index, write_dense_index
from embedkit.index.lifecycle import remove_documents
from embedkit.index.torch_search import TorchExactSearch


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_matches_faiss_flat(metric):
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((37, 24)).astype(np.float32)
    exact = faiss.IndexFlatIP(24) if metric == "ip" else faiss.IndexFlatL2(24)
    exact.add(vectors)
    want_scores, want_rows = exact.search(queries, 10)
    labels = np.arange(1000, dtype=np.int64) * 3 + 7  # arbitrary row ids are carried through
    searcher = TorchExactSearch(vectors, labels, metric=metric, device="cpu", chunk_rows=128, query_batch=16)
    scores, rows = searcher.search(queries, 10)
    np.testing.assert_array_equal(rows, labels[want_rows])
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)


def test_fewer_vectors_than_k_are_padded():
    searcher = TorchExactSearch(np.eye(3, dtype=np.float32), device="cpu")
    scores, rows = searcher.search(np.eye(3, dtype=np.float32)[:1], 5)
    assert rows[0, 0] == 0 and sorted(rows[0, :3].tolist()) == [0, 1, 2] and rows[0, 3:].tolist() == [-1, -1]
    assert scores[0, 0] == pytest.approx(1.0)


def test_index_backend_torch_equals_faiss_and_skips_deleted(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(id=f"d{i}", text=f"text {i}") for i in range(300)]
    spec = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=16)
    path = write_dense_index(tmp_path / "hnsw", vectors, docs, spec, factory="HNSW16")
    remove_documents(path, ["d0", "d5"])
    by_faiss = Index.load(path).search_vectors(vectors[:20], 5)
    by_torch = Index.load(path, backend="torch", search_device="cpu").search_vectors(vectors[:20], 5)
    assert [[h.id for h in hits] for hits in by_torch] == [[h.id for h in hits] for hits in by_faiss]
    assert all(h.id not in ("d0", "d5") for hits in by_torch for h in hits)
