"""Issue 24: segmented dense folders. Updates write new segments and deletion files and swap the manifest;
search over segments equals one index holding the same documents; merges, crashes, old folders, `index info`.

Vectors are tiny (dim 8) and synthetic, so each example takes milliseconds; the kill tests run a short script
in a fresh interpreter (faiss and embedkit.index only, no torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.data.corpus import Document
from embedkit.encoding import EncoderSpec
from embedkit.errors import EmbedkitError, IndexFormatError
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
# IVF folders are trained and calibrated at every build: fewer examples keep those properties at seconds.
IVF_PROPERTY = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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


@IVF_PROPERTY
@given(ops=operations)
def test_ivf_flat_at_full_nprobe_equals_exact_search(tmp_path, ops):
    path, model = start(tmp_path, "IVF4,Flat", count=40)
    run_operations(path, model, ops)
    rebuilt = model.rebuild(tmp_path / "rebuilt", "Flat")
    assert_same(hits(Index.load(path), nprobe=4), hits(Index.load(rebuilt)))


@IVF_PROPERTY
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


# --- a kill at every step of a commit leaves the old state or the new one ---------------------------------

KILL_SCRIPT = """
import json, sys
import numpy as np
from embedkit.data.corpus import Document
from embedkit.index.lifecycle import add_vectors, remove_documents
path, op = sys.argv[1], json.loads(sys.argv[2])
if op["kind"] == "add":
    add_vectors(path, [Document(id=i, text=i) for i in op["ids"]], np.array(op["vectors"], dtype=np.float32))
else:
    remove_documents(path, op["ids"])
"""


def run_killed(path: Path, op: dict, step: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBEDKIT_CRASH_AT": step}
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), json.dumps(op)], capture_output=True,
                          text=True, env=env, timeout=120, cwd=ROOT)


def live_ids(path: Path) -> set[str]:
    index = Index.load(path)
    return set(index.docstore.ids_by_row().values())


def check_state(path: Path, model: Model, tmp_path: Path) -> None:
    assert live_ids(path) == set(model.docs)
    assert verify_index(path).num_docs == len(model.docs)
    assert_same(hits(Index.load(path)), hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat"))))


@pytest.mark.parametrize("step", ["collected", "segment-written", "segment-synced", "manifest-swapped"])
@pytest.mark.parametrize("kind", ["add", "remove"])
def test_an_update_killed_at_every_step_leaves_the_old_or_the_new_state(tmp_path, step, kind):
    from embedkit.index.segments import SEGMENT_STEPS

    assert step in SEGMENT_STEPS
    path, model = start(tmp_path, "Flat")
    add_vectors(path, docs_for(["d3", "x1"]), np.stack([vector(1), vector(2)]))  # segmented already
    model.add(["d3", "x1"], np.stack([vector(1), vector(2)]))
    files_before = {p.name: p.read_bytes() for p in path.iterdir()}
    if kind == "add":
        op = {"kind": "add", "ids": ["d5", "x2"], "vectors": np.stack([vector(3), vector(4)]).tolist()}
    else:
        op = {"kind": "remove", "ids": ["d5", "x1"]}
    result = run_killed(path, op, step)
    assert result.returncode == 137, result.stderr
    if step == "manifest-swapped":  # the manifest swap is the commit
        if kind == "add":
            model.add(op["ids"], np.array(op["vectors"], dtype=np.float32))
        else:
            model.remove(op["ids"])
    else:  # nothing the old state reads was changed
        assert {name: (path / name).read_bytes() for name in files_before} == files_before
    check_state(path, model, tmp_path)
    # the next update collects the killed one's files and reuses its generation's names
    add_vectors(path, docs_for(["y1"]), vector(5)[None])
    model.add(["y1"], vector(5)[None])
    check_state(path, model, tmp_path)


@pytest.mark.parametrize("step", ["merge-written", "merge-synced", "merge-swapped"])
def test_a_merge_killed_at_every_step_loses_nothing(tmp_path, step):
    path, model = start(tmp_path, "HNSW8", count=20)
    set_merge_policy(path, MergePolicy(max_segments=2))
    add_vectors(path, docs_for(["d1", "n1"]), np.stack([vector(11), vector(12)]))
    model.add(["d1", "n1"], np.stack([vector(11), vector(12)]))
    assert len(DenseManifest.load(path).segments) == 2
    op = {"kind": "add", "ids": ["n2", "d2"], "vectors": np.stack([vector(13), vector(14)]).tolist()}
    result = run_killed(path, op, step)  # the add commits, then the policy merges two segments
    assert result.returncode == 137, result.stderr
    model.add(op["ids"], np.array(op["vectors"], dtype=np.float32))
    segments = DenseManifest.load(path).segments
    assert len(segments) == (2 if step == "merge-swapped" else 3)
    assert live_ids(path) == set(model.docs)
    assert verify_index(path).num_docs == len(model.docs)
    remove_documents(path, ["n1"])  # the next update: merges again if due, collects the leftovers
    model.remove(["n1"])
    assert live_ids(path) == set(model.docs) and len(DenseManifest.load(path).segments) <= 2
    verify_index(path)


def test_a_failed_update_leaves_no_files_and_the_old_state(tmp_path):
    path, model = start(tmp_path, "Flat")
    add_vectors(path, docs_for(["x1"]), vector(1)[None])
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(EmbedkitError, match="shape"):
        add_vectors(path, docs_for(["x2", "x3"]), np.zeros((2, DIM + 1), dtype=np.float32))
    assert sorted(p.name for p in path.iterdir()) == before
    model.add(["x1"], vector(1)[None])
    check_state(path, model, tmp_path)


# --- old folders ---------------------------------------------------------------------------------------------


def test_an_old_folder_opens_unchanged_and_its_first_update_converts_it_in_place(tmp_path, capsys):
    from embedkit.cli import main

    path, model = start(tmp_path, "Flat")
    manifest_bytes = (path / "manifest.json").read_bytes()
    assert json.loads(manifest_bytes)["format_version"] == 2 and "segments" not in json.loads(manifest_bytes)
    opened = Index.load(path)
    assert_same(hits(opened), hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat"))))
    assert main(["index", "info", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert status["layout"] == "single" and status["segments"][0]["documents"] == 12
    assert (path / "manifest.json").read_bytes() == manifest_bytes  # reading wrote nothing
    old_files = {name: ((path / name).stat().st_ino, (path / name).read_bytes())
                 for name in ("index.faiss", "docstore.sqlite")}

    remove_documents(path, ["d4"])
    model.remove(["d4"])
    saved = json.loads((path / "manifest.json").read_text())
    assert saved["format_version"] == 3
    assert saved["segments"][0]["faiss"] == "index.faiss" and saved["segments"][0]["docstore"] == "docstore.sqlite"
    # not copied, not rewritten: the same files are segment 0
    assert {name: ((path / name).stat().st_ino, (path / name).read_bytes()) for name in old_files} == old_files
    check_state(path, model, tmp_path)


def test_an_old_hnsw_folder_with_masked_rows_converts(tmp_path):
    """Before segments, an HNSW removal deleted the store row and listed it in deleted.npy."""
    from embedkit.index.docstore import DocStore

    path, model = start(tmp_path, "HNSW8", count=20)
    manifest = DenseManifest.load(path)
    store = DocStore(path / "docstore.sqlite", readonly=False)
    store.delete_rows([2, 7])
    store.close()
    np.save(path / "deleted.npy", np.array([2, 7], dtype=np.int64))
    manifest.num_docs = 18
    manifest.record_files(path)
    manifest.save(path)
    model.remove(["d2", "d7"])
    assert live_ids(path) == set(model.docs)

    remove_documents(path, ["d9"])
    add_vectors(path, docs_for(["d2", "z"]), np.stack([vector(31), vector(32)]))
    model.remove(["d9"])
    model.add(["d2", "z"], np.stack([vector(31), vector(32)]))
    segments = DenseManifest.load(path).segments
    assert segments[0].faiss == "index.faiss" and segments[0].num_deleted == 3  # rows 2, 7 and 9
    assert live_ids(path) == set(model.docs)
    verify_index(path)
    found = hits(Index.load(path), ef_search=64)
    for query, got in zip(QUERIES, found, strict=True):
        for doc_id, score in got:
            np.testing.assert_allclose(score, float(query @ model.docs[doc_id]), atol=1e-5)


# --- merging, info, backends ---------------------------------------------------------------------------------


def test_merge_policy_bounds_segments_and_rewrites_deleted_ones(tmp_path, capsys):
    from embedkit.cli import main

    path, model = start(tmp_path, "Flat")
    assert main(["index", "compact", str(path), "--max-segments", "3", "--policy-only"]) == 0
    for number in range(6):
        ids = [f"m{number}a", f"m{number}b"]
        add_vectors(path, docs_for(ids), np.stack([vector(100 + 2 * number), vector(101 + 2 * number)]))
        model.add(ids, np.stack([vector(100 + 2 * number), vector(101 + 2 * number)]))
        assert len(DenseManifest.load(path).segments) <= 3
    check_state(path, model, tmp_path)
    big = DenseManifest.load(path).segments[0]
    remove_documents(path, [f"d{i}" for i in range(7)])  # 7 of segment 0's 12 rows: past the 0.5 default
    model.remove([f"d{i}" for i in range(7)])
    segments = DenseManifest.load(path).segments
    assert segments[0].id != big.id and segments[0].num_vectors == segments[0].num_docs == 5  # rewritten
    check_state(path, model, tmp_path)
    history = [entry.action for entry in DenseManifest.load(path).history]
    assert "merge-segments" in history and history[-1] == "merge-segments"

    assert main(["index", "compact", str(path), "--merge-policy", "never", "--policy-only"]) == 0
    for number in range(4):
        add_vectors(path, docs_for([f"q{number}"]), vector(300 + number)[None])
        model.add([f"q{number}"], vector(300 + number)[None])
    assert len(DenseManifest.load(path).segments) == len(segments) + 4  # never merged
    capsys.readouterr()
    assert main(["index", "info", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert status["layout"] == "segmented" and status["merge_policy"]["mode"] == "never"
    assert [s["documents"] for s in status["segments"]] == [s.num_docs for s in DenseManifest.load(path).segments]
    assert all(s["bytes"] > 0 and 0 <= s["deleted_fraction"] < 1 for s in status["segments"])
    assert main(["index", "compact", str(path)]) == 0  # one segment again, the policy kept
    manifest = DenseManifest.load(path)
    assert not manifest.segments and manifest.merge_policy.mode == "never" and manifest.num_docs == len(model.docs)
    check_state(path, model, tmp_path)


def test_info_says_when_ivf_retraining_is_due(tmp_path, capsys):
    from embedkit.cli import main

    path, model = start(tmp_path, "IVF4,Flat", count=40)
    add_vectors(path, docs_for(["a0"]), vector(500)[None])
    main(["index", "info", str(path)])
    status = json.loads(capsys.readouterr().out)["status"]
    assert status["retrain_due"] is False and status["added_since_training"] == 1
    ids = [f"b{i}" for i in range(45)]
    add_vectors(path, docs_for(ids), np.stack([vector(600 + i) for i in range(45)]))
    main(["index", "info", str(path)])
    status = json.loads(capsys.readouterr().out)["status"]
    assert status["retrain_due"] is True and status["added_since_training"] == 46
    assert "retraining is due" in verify_index(path).summary()
    compact_index(path)  # retrains on the current corpus
    main(["index", "info", str(path)])
    assert json.loads(capsys.readouterr().out)["status"]["retrain_due"] is False


def test_mmap_and_torch_backends_search_segments_alike(tmp_path):
    path, model = start(tmp_path, "Flat")
    run_operations(path, model, [("add", [(3, 1), (30 % POOL, 2)]), ("remove", [5, 6]), ("add", [(1, 9)])])
    want = hits(Index.load(model.rebuild(tmp_path / "rebuilt", "Flat")))
    assert len(DenseManifest.load(path).segments) == 3
    assert_same(hits(Index.load(path, mmap=True)), want)
    assert_same(hits(Index.load(path, backend="torch", search_device="cpu")), want)


# --- updates read only what they change; never delete what is not ours ---------------------------------------


def test_an_update_does_not_read_untouched_segments_but_verify_does(tmp_path):
    path, model = start(tmp_path, "Flat")
    add_vectors(path, docs_for(["n1", "n2"]), np.stack([vector(1), vector(2)]))
    faiss_file = path / "index.faiss"  # segment 0, which a removal from segment 1 does not touch
    data = bytearray(faiss_file.read_bytes())
    data[-5] ^= 0xFF  # same size: only a checksum sees it
    faiss_file.write_bytes(bytes(data))
    remove_documents(path, ["n1"])  # cost of the change: segment 0 is neither read nor hashed
    with pytest.raises(IndexFormatError, match="index.faiss"):
        verify_index(path)


def test_a_damaged_deletion_file_stops_the_update_that_reads_it(tmp_path):
    path, _ = start(tmp_path, "Flat")
    remove_documents(path, ["d1"])
    deleted = path / DenseManifest.load(path).segments[0].deleted
    data = bytearray(deleted.read_bytes())
    data[-1] ^= 0x01
    deleted.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        remove_documents(path, ["d2"])


def test_garbage_collection_removes_only_unreferenced_files_embedkit_names(tmp_path):
    path, _ = start(tmp_path, "Flat")
    remove_documents(path, ["d1"])
    first = DenseManifest.load(path).segments[0].deleted
    strangers = ["notes.txt", "seg-foo.faiss", "seg-000001.faiss.bak", "trained.faiss"]
    for name in strangers:
        (path / name).write_text("mine")
    remove_documents(path, ["d2"])  # replaces the deletion file: the first one stays for readers of that state
    second = DenseManifest.load(path).segments[0].deleted
    assert first != second and (path / first).exists()
    remove_documents(path, ["d3"])  # the next update collects it
    assert not (path / first).exists() and (path / second).exists()
    assert all((path / name).read_text() == "mine" for name in strangers)
    verify_index(path)


@pytest.mark.parametrize("edit, needle", [
    (lambda seg, m: seg.update(faiss="../outside.faiss"), "'..' component"),
    (lambda seg, m: seg.update(faiss="seg-000009.faiss"), "not a name embedkit gives"),
    (lambda seg, m: seg.update(deleted="docstore.sqlite", num_deleted=1), "not a name embedkit gives"),
    (lambda seg, m: seg.update(row_stop=m["next_row"] + 5), "pass next_row"),
    (lambda seg, m: seg.update(num_docs=seg["num_docs"] + 1), "documents"),
])
def test_a_crafted_segment_list_is_refused(tmp_path, edit, needle):
    path, _ = start(tmp_path, "Flat")
    add_vectors(path, docs_for(["n1"]), vector(1)[None])
    data = json.loads((path / "manifest.json").read_text())
    edit(data["segments"][-1], data)
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match=needle):
        Index.load(path)


def test_segment_ids_are_never_reused_after_a_compaction(tmp_path):
    """A server reusing opened segments by id must never meet an id naming other files."""
    path, _ = start(tmp_path, "Flat")
    add_vectors(path, docs_for(["n1"]), vector(1)[None])
    add_vectors(path, docs_for(["n2"]), vector(2)[None])
    seen = {segment.id for segment in DenseManifest.load(path).segments}
    compact_index(path)
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 3  # the generation is kept
    add_vectors(path, docs_for(["n3"]), vector(3)[None])
    assert DenseManifest.load(path).segments[-1].id > max(seen)
