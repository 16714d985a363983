"""Issue 24: segmented dense folders. Updates write new segments and deletion files and swap the manifest;
search over segments equals one index holding the same documents; merges, crashes, old folders, `index info`.

Vectors are tiny (dim 8) and synthetic, so each example takes milliseconds; the kill tests run a short script
in a fresh interpreter (faiss and embedkit.index only, no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.data.corpus import Document
from embedkit.encoding import EncoderSpec
from embedkit.index import Index, verify_index, write_dense_index
from embedkit.index.dense import DenseIndex
from embedkit.index.lifecycle import add_vectors, compact_index, remove_documents, set_merge_policy
from embedkit.index.manifest import DenseManifest, MergePolicy

ROOT = Path(__file__).resolve().parent.parent
DIM = 8
SPEC = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=DIM)
POOL = 24  # document ids d0..d23: adds often hit existing ids (upserts)
QUERIES = np.random.default_rng(77).standard_normal((12, DIM)).astype(np.float32)  # < 20: FAISS's exact loop


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class Model:
    """What the folder should hold: id -> vector, in the global row order of the live documents."""

    def __init__(self) -> None:
        self.docs: dict[str, np.ndarray] = {}  # insertion order = row order (an upsert moves an id to the end)

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        for doc_id, vec in zip(ids, vectors, strict=True):
            self.docs.pop(doc_id, None)
            self.docs[doc_id] = vec

    def remove(self, ids: list[str]) -> None:
        for doc_id in ids:
            self.docs.pop(doc_id, None)

    def rebuild(self, out: Path, factory: str) -> Path:
        ids = list(self.docs)
        return write_dense_index(out, np.stack([self.docs[i] for i in ids]), [Document(id=i, text=i) for i in ids],
                                 SPEC, factory=factory, overwrite=True)


def docs_for(ids: list[str]) -> list[Document]:
    return [Document(id=doc_id, text=doc_id) for doc_id in ids]


# One operation: ("add", [(id number, vector seed), ...]) | ("remove", [id numbers]) | ("compact",) | ("policy", n)
add_op = st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, POOL - 1), st.integers(0, 10**6)),
                                            min_size=1, max_size=6))
remove_op = st.tuples(st.just("remove"), st.lists(st.integers(0, POOL + 3), min_size=1, max_size=4))
compact_op = st.tuples(st.just("compact"))
policy_op = st.tuples(st.just("policy"), st.sampled_from([1, 2, 3, 10]))
operations = st.lists(st.one_of(add_op, add_op, remove_op, compact_op, policy_op), min_size=1, max_size=7)


def run_operations(path: Path, model: Model, ops, *, duplicate_pool: list[np.ndarray] | None = None,
                   allow_compact: bool = True) -> None:
    for op in ops:
        if op[0] == "add":
            ids = [f"d{number}" for number, _ in op[1]]
            if duplicate_pool is not None:  # vectors repeated across documents: equal scores, the tie rule decides
                vectors = np.stack([duplicate_pool[seed % len(duplicate_pool)] for _, seed in op[1]])
            else:
                vectors = np.stack([vector(seed) for _, seed in op[1]])
            add_vectors(path, docs_for(ids), vectors)
            last = {doc_id: position for position, doc_id in enumerate(ids)}  # a repeated id: the last one wins
            keep = sorted(last.values())
            model.add([ids[i] for i in keep], vectors[keep])
        elif op[0] == "remove":
            ids = [f"d{number}" for number in op[1]]
            if len(set(model.docs) - set(ids)) == 0:
                continue  # removing every document is refused; not what these properties are about
            remove_documents(path, ids)
            model.remove(ids)
        elif op[0] == "compact" and allow_compact:
            compact_index(path)
        elif op[0] == "policy":
            set_merge_policy(path, MergePolicy(max_segments=op[1], max_deleted_fraction=0.5))


def hits(index: Index, **params) -> list[list[tuple[str, float]]]:
    assert isinstance(index, DenseIndex)
    found = index.search_vectors(QUERIES, 10, with_text=False, **params)
    return [[(hit.id, hit.score) for hit in query] for query in found]


def assert_same(got, want) -> None:
    for got_query, want_query in zip(got, want, strict=True):
        assert [doc_id for doc_id, _ in got_query] == [doc_id for doc_id, _ in want_query]
        np.testing.assert_allclose([s for _, s in got_query], [s for _, s in want_query], rtol=0, atol=1e-5)


def start(tmp_path: Path, factory: str, count: int = 12, seed: int = 0, pool=None) -> tuple[Path, Model]:
    model = Model()
    ids = [f"d{i}" for i in range(count)]
    vectors = (np.stack([pool[i % len(pool)] for i in range(count)]) if pool is not None
               else np.stack([vector(seed * 1000 + i) for i in range(count)]))
    model.add(ids, vectors)
    path = write_dense_index(tmp_path / "live", vectors, docs_for(ids), SPEC, factory=factory, overwrite=True)
    return path, model


PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- search over segments equals one index holding the same documents -------------------------------------


@PROPERTY
@given(ops=operations)
def test_flat_segments_equal_a_rebuilt_index(tmp_path, ops):
    path, model = start(tmp_path, "Flat")
    run_operations(path, model, ops)
    live = Index.load(path)
    assert len(live) == len(model.docs)
    assert_same(hits(live), hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat"))))
    assert verify_index(path).num_docs == len(model.docs)


@PROPERTY
@given(ops=operations)
def test_ties_are_broken_by_global_row_like_one_index(tmp_path, ops):
    """Six distinct vectors shared by all documents: every query has many equal scores."""
    pool = [vector(9000 + i) for i in range(6)]
    path, model = start(tmp_path, "Flat", pool=pool)
    run_operations(path, model, ops, duplicate_pool=pool)
    want = hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat")))
    got = hits(Index.load(path))
    assert_same(got, want)
    for query in got:  # the rule itself: by score, then by row (older documents first)
        order = {doc_id: position for position, doc_id in enumerate(model.docs)}
        keys = [(-score, order[doc_id]) for doc_id, score in query]
        assert keys == sorted(keys)


@PROPERTY
@given(ops=operations)
def test_ivf_flat_at_full_nprobe_equals_exact_search(tmp_path, ops):
    path, model = start(tmp_path, "IVF4,Flat", count=40)
    run_operations(path, model, ops)
    rebuilt = model.rebuild(tmp_path / "rebuilt", "Flat")
    assert_same(hits(Index.load(path), nprobe=4), hits(Index.load(rebuilt)))


@PROPERTY
@given(ops=operations)
def test_ivf_pq_segments_equal_one_index_of_the_same_trained_structure(tmp_path, ops):
    """New segments copy the trained quantizer and codebooks: one index from that template holding the same
    vectors in the same row order answers the same (nprobe = nlist)."""
    import faiss

    path, model = start(tmp_path, "IVF4,PQ4x4", count=64)
    run_operations(path, model, ops, allow_compact=False)  # compaction retrains: another structure
    manifest = DenseManifest.load(path)
    if manifest.trained_index is None:
        return  # no update happened: one segment, nothing to compare
    template = faiss.read_index(str(path / manifest.trained_index))
    ids = list(model.docs)
    template.add_with_ids(np.stack([model.docs[i] for i in ids]), np.arange(len(ids), dtype=np.int64))
    template.nprobe = 4
    scores, rows = template.search(QUERIES, 10)
    want = [[(ids[row], float(score)) for score, row in zip(s, r, strict=True) if row >= 0]
            for s, r in zip(scores, rows, strict=True)]
    got = hits(Index.load(path), nprobe=4)
    for got_query, want_query in zip(got, want, strict=True):  # PQ codes tie often: compare as score multisets
        np.testing.assert_allclose(sorted(s for _, s in got_query), sorted(s for _, s in want_query), atol=1e-5)
        assert {i for i, _ in got_query} <= set(model.docs)


@PROPERTY
@given(ops=operations)
def test_hnsw_segments_find_only_live_documents_with_their_exact_scores(tmp_path, ops):
    """HNSW is approximate: each segment's graph answers for its documents; the merged answer holds only live
    documents, each once, scored with its current vector, and finds what exact search finds."""
    path, model = start(tmp_path, "HNSW8", count=30)
    run_operations(path, model, ops)
    truth = hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat")))
    got = hits(Index.load(path), ef_search=64)
    recall = []
    for query, got_query, want_query in zip(QUERIES, got, truth, strict=True):
        assert len(got_query) == min(10, len(model.docs))
        assert len({doc_id for doc_id, _ in got_query}) == len(got_query)
        for doc_id, score in got_query:
            np.testing.assert_allclose(score, float(query @ model.docs[doc_id]), atol=1e-5)
        recall.append(len({i for i, _ in got_query} & {i for i, _ in want_query}) / len(want_query))
    assert np.mean(recall) >= 0.95
