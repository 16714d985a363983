"""Issue 24, gap d: one merge policy (`embedkit.index.merge_policy`) for dense and BM25 index folders.

What is tested: each field has one meaning for both kinds (a deleted share counted over the whole index, as
Lucene's `deletesPctAllowed`; a segment count), each kind carries out what is due with what its backend can
(dense: the chosen segments, the others' files untouched; BM25: a whole compaction), manifests the earlier
two models wrote load and are saved in the new form, and one CLI command (with the older `index compact`
flags as aliases) sets and shows the policy the same way for both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit.cli import main
from embedkit.data.corpus import Document
from embedkit.encoding import EncoderSpec
from embedkit.index import Index, write_dense_index
from embedkit.index.lifecycle import add_vectors, remove_documents, set_merge_policy
from embedkit.index.manifest import MANIFEST_NAME, BM25Manifest, DenseManifest, IndexManifest
from embedkit.index.merge_policy import MergePolicy
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical.java import java_available
from embedkit.lexical.update import add_documents
from embedkit.lexical.update import remove_documents as remove_bm25
from embedkit.lexical.update import set_merge_policy as set_bm25_policy

DIM = 8
SPEC = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=DIM)
NEVER = MergePolicy(max_segments=None, max_deleted_fraction=None)


def vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def dense(path: Path, count: int = 12) -> Path:
    ids = [f"d{i}" for i in range(count)]
    return write_dense_index(path, vectors(count, 0), [Document(id=i, text=i) for i in ids], SPEC, factory="Flat",
                             overwrite=True)


def bm25(path: Path, backend: str = "bm25s", count: int = 12, merge: MergePolicy | None = None) -> Path:
    words = ["alpha", "beta", "gamma", "delta"]
    documents = [Document(id=f"d{i}", title="", text=f"{words[i % 4]} {words[(i + 1) % 4]} d{i}") for i in range(count)]
    extra = {"merge": merge} if merge is not None else {}
    return build_bm25_index(documents, path, BM25Settings(backend=backend, **extra), overwrite=True)


def bm25_docs(ids: list[str]) -> list[Document]:
    return [Document(id=doc_id, title="", text=f"alpha epsilon {doc_id}") for doc_id in ids]


# --- the model: one meaning of each field ------------------------------------------------------------------


def test_deleted_share_is_counted_over_the_whole_index():
    policy = MergePolicy(max_segments=None, max_deleted_fraction=0.25)
    # a small segment half deleted, the index 2/102 deleted: a per-segment reading would merge; this does not
    assert policy.next_merge([(98, 0), (4, 2)]) is None and not policy.due(2, 102, 2)
    # 29 of 100 deleted: due; the segment with the highest deleted share goes first
    assert policy.due(2, 100, 29) and policy.next_merge([(90, 27), (10, 2)]) == [0]
    assert policy.next_merge([(90, 20), (10, 10)]) == [1]
    assert not policy.due(1, 100, 25)  # exactly the limit is tolerated ("max")
    assert MergePolicy(max_deleted_fraction=0).due(1, 1000, 1)  # 0: any deletion
    assert not MergePolicy(max_deleted_fraction=0).due(1, 1000, 0)


def test_segment_count_merges_the_smallest_neighbours():
    policy = MergePolicy(max_segments=3, max_deleted_fraction=None)
    assert policy.next_merge([(50, 0), (3, 0), (2, 0)]) is None
    assert policy.next_merge([(50, 0), (3, 0), (2, 0), (40, 0)]) == [1, 2]
    assert policy.next_merge([(50, 0), (3, 0), (2, 0), (1, 0), (1, 0)]) == [2, 3, 4]
    assert policy.next_merge([(5, 0), (5, 0), (5, 0), (5, 0)]) == [2, 3]  # equal runs: the newest
    assert policy.due(4, 100, 0) and not policy.due(3, 100, 99)


def test_never_and_rules_turned_off():
    assert NEVER.mode == "never" and MergePolicy().mode == "auto"
    assert not NEVER.due(1000, 10, 10) and NEVER.next_merge([(1, 1)] * 50) is None
    assert MergePolicy(max_segments=None).mode == "auto"
    assert MergePolicy().with_changes("never") == NEVER
    # a rule given after never starts from the defaults; auto alone restores them
    assert NEVER.with_changes(max_segments=4) == MergePolicy(max_segments=4)
    assert NEVER.with_changes("auto") == MergePolicy()
    assert MergePolicy(max_segments=4).with_changes(max_deleted_fraction=None) == MergePolicy(
        max_segments=4, max_deleted_fraction=None)
    with pytest.raises(ValueError, match="cannot go with"):
        MergePolicy().with_changes("never", max_segments=3)
    with pytest.raises(ValueError):
        MergePolicy(max_segments=0)
    with pytest.raises(ValueError):
        MergePolicy(max_deleted_fraction=1.5)
    with pytest.raises(ValueError, match="never merge"):
        MergePolicy.model_validate({"mode": "auto", "max_segments": None, "max_deleted_fraction": None})


counts = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda c: (c[0] + c[1], c[1])),
                  min_size=1, max_size=14)
policies = st.builds(MergePolicy, max_segments=st.one_of(st.none(), st.integers(1, 8)),
                     max_deleted_fraction=st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])))


@settings(max_examples=300, deadline=None)
@given(policy=policies, segments=counts)
def test_what_is_due_is_the_same_question_for_both_kinds(policy, segments):
    """BM25 asks `due` with index totals, dense asks `next_merge` per segment: they agree, and merging what
    `next_merge` names until nothing is due ends within one merge per segment, within the policy."""
    documents, deleted = sum(d for d, _ in segments), sum(x for _, x in segments)
    assert (policy.next_merge(segments) is not None) == policy.due(len(segments), documents, deleted)
    state = list(segments)
    for _ in range(len(segments)):
        positions = policy.next_merge(state)
        if positions is None:
            break
        assert positions == list(range(positions[0], positions[-1] + 1)) and 0 <= positions[0] <= positions[-1] < len(state)
        merged = sum(state[p][0] - state[p][1] for p in positions)  # deleted rows dropped
        state[positions[0] : positions[-1] + 1] = [(merged, 0)]
    assert policy.next_merge(state) is None
    assert not policy.too_many_segments(len(state))


# --- manifests the two earlier models wrote ----------------------------------------------------------------


def rewrite_manifest(path: Path, edit) -> None:
    data = json.loads((path / MANIFEST_NAME).read_text())
    edit(data)
    (path / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def segmented_dense(tmp_path_factory) -> Path:
    """A dense folder with 2 segments (format 3: its manifest records `merge_policy`), never merging."""
    path = dense(tmp_path_factory.mktemp("dense") / "idx")
    set_merge_policy(path, NEVER)
    add_vectors(path, [Document(id="n0", text="n0"), Document(id="n1", text="n1")], vectors(2, 1))
    return path


@pytest.mark.parametrize(("old", "want"), [
    ({"mode": "never", "max_segments": 10, "max_deleted_fraction": 0.5}, NEVER),
    ({"mode": "auto", "max_segments": 3, "max_deleted_fraction": 0.5},
     MergePolicy(max_segments=3, max_deleted_fraction=0.5)),
])
def test_old_dense_manifests_load_and_are_saved_in_the_new_form(segmented_dense, tmp_path, old, want):
    import shutil

    path = tmp_path / "idx"
    shutil.copytree(segmented_dense, path)
    rewrite_manifest(path, lambda data: data.__setitem__("merge_policy", old))  # what the dense model wrote
    manifest = DenseManifest.load(path)
    assert manifest.merge_policy == want and len(manifest.segments) == 2
    assert main(["index", "info", str(path)]) == 0
    # an update commits the new form (the policy runs on the converted value)
    remove_documents(path, ["d0"])
    saved = json.loads((path / MANIFEST_NAME).read_text())["merge_policy"]
    assert saved == {"max_segments": want.max_segments, "max_deleted_fraction": want.max_deleted_fraction,
                     "mode": want.mode}
    assert DenseManifest.load(path).merge_policy == want


@pytest.mark.parametrize(("old", "want"), [
    ({"max_segments": None, "max_deleted_fraction": None}, NEVER),
    ({"max_segments": 4, "max_deleted_fraction": None}, MergePolicy(max_segments=4, max_deleted_fraction=None)),
    ({"max_segments": 10, "max_deleted_fraction": 0.25}, MergePolicy()),
])
def test_old_bm25_manifests_load_and_are_saved_in_the_new_form(tmp_path, old, want):
    path = bm25(tmp_path / "idx")
    rewrite_manifest(path, lambda data: data["settings"].__setitem__("merge", old))  # what the BM25 model wrote
    assert BM25Manifest.load(path).settings.merge == want
    add_documents(path, bm25_docs(["n0"]))
    saved = json.loads((path / MANIFEST_NAME).read_text())["settings"]["merge"]
    assert saved == {**old, "mode": want.mode}
    assert BM25Manifest.load(path).settings.merge == want


# --- each kind carries out what is due ---------------------------------------------------------------------


def test_dense_rewrites_only_the_most_deleted_segment(tmp_path):
    path = dense(tmp_path / "idx", count=12)
    set_merge_policy(path, MergePolicy(max_segments=None, max_deleted_fraction=0.25))
    add_vectors(path, [Document(id=f"n{i}", text=f"n{i}") for i in range(8)], vectors(8, 2))
    first, second = DenseManifest.load(path).segments
    # 3 of 20 rows deleted, 2 of them in the small segment (25% of it): within the index-wide limit
    remove_documents(path, ["d0", "n0", "n1"])
    assert [s.id for s in DenseManifest.load(path).segments] == [first.id, second.id]
    before = (path / first.faiss).stat().st_ino
    remove_documents(path, ["n2", "n3", "n4"])  # 6 of 20 > 25%: n-segment (5/8) rewritten, segment 0 (1/12) kept
    segments = DenseManifest.load(path).segments
    assert segments[0].id == first.id and (path / first.faiss).stat().st_ino == before
    assert segments[1].id != second.id and segments[1].num_vectors == segments[1].num_docs == 3
    assert DenseManifest.load(path).history[-1].action == "merge-segments"
    hits = Index.load(path).search_vectors(vectors(8, 2)[5:6], 3, with_text=False)
    assert hits[0][0].id == "n5"


@pytest.mark.parametrize("backend", ["bm25s", pytest.param("pyserini", marks=pytest.mark.skipif(
    not java_available(), reason="pyserini needs a Java 21+ runtime"))])
def test_bm25_compacts_whole_when_anything_is_due(tmp_path, backend):
    path = bm25(tmp_path / "idx", backend, merge=MergePolicy(max_segments=2, max_deleted_fraction=0.25))
    report = add_documents(path, bm25_docs(["n0", "n1", "n2", "n3"]))
    assert not report.compacted and len(BM25Manifest.load(path).segments) == 2
    # a small segment half deleted, 2 of 16 indexed rows over the index: not due (the dense test's reading)
    report = remove_bm25(path, ["n0", "n1"])
    assert not report.compacted and sum(s.deleted for s in BM25Manifest.load(path).segments) == 2
    report = add_documents(path, bm25_docs(["n4"]))  # a third segment: more than 2
    assert report.compacted and len(BM25Manifest.load(path).segments) == 1
    assert BM25Manifest.load(path).segments[0].deleted == 0 and BM25Manifest.load(path).num_docs == 15
    set_bm25_policy(path, MergePolicy(max_segments=None, max_deleted_fraction=0.25))
    assert not remove_bm25(path, ["d0", "d1", "d2"]).compacted  # 3 of 15
    assert remove_bm25(path, ["d3"]).compacted  # 4 of 15 > 25%
    assert BM25Manifest.load(path).num_docs == 11


# --- one CLI for both kinds --------------------------------------------------------------------------------


@pytest.fixture
def both(tmp_path) -> dict[str, Path]:
    return {"dense": dense(tmp_path / "dense"), "bm25": bm25(tmp_path / "bm25")}


def recorded(path: Path) -> MergePolicy:
    manifest = IndexManifest.load(path)
    return manifest.settings.merge if isinstance(manifest, BM25Manifest) else manifest.merge_policy


@pytest.mark.parametrize("kind", ["dense", "bm25"])
def test_one_command_sets_and_shows_the_policy_for_either_kind(both, kind, capsys):
    path = both[kind]
    assert main(["index", "merge-policy", str(path)]) == 0
    assert "more than 10 segments or more than 25% of the indexed rows are deleted" in capsys.readouterr().out
    steps = [
        (["--max-segments", "4"], MergePolicy(max_segments=4)),
        (["--max-deleted-fraction", "off"], MergePolicy(max_segments=4, max_deleted_fraction=None)),
        (["--mode", "never"], NEVER),
        (["--max-deleted-fraction", "0.1"], MergePolicy(max_deleted_fraction=0.1)),  # on again from the defaults
        (["--max-segments", "off", "--max-deleted-fraction", "0"], MergePolicy(max_segments=None,
                                                                              max_deleted_fraction=0.0)),
        (["--mode", "never"], NEVER),
        (["--mode", "auto"], MergePolicy()),
    ]
    for flags, want in steps:
        assert main(["index", "merge-policy", str(path), *flags]) == 0
        assert recorded(path) == want, flags
        assert want.describe() in capsys.readouterr().out
    # the older flags of `index compact` are aliases: the same policy, no compaction with --policy-only
    assert main(["index", "compact", str(path), "--merge-policy", "never", "--policy-only"]) == 0
    assert recorded(path) == NEVER
    assert main(["index", "compact", str(path), "--max-segments", "3", "--policy-only"]) == 0
    assert recorded(path) == MergePolicy(max_segments=3)
    capsys.readouterr()
    assert main(["index", "info", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert status["merge_policy"] == {"max_segments": 3, "max_deleted_fraction": 0.25, "mode": "auto"}
    assert [s["documents"] for s in status["segments"]] in ([12], [])  # a fresh dense folder lists none yet


@pytest.mark.parametrize("flags", [
    ["--mode", "never", "--max-segments", "3"], ["--max-segments", "0"], ["--max-deleted-fraction", "1.5"],
    ["--max-deleted-fraction", "lots"], ["--mode", "sometimes"],
])
def test_bad_policies_are_refused_with_exit_2(both, flags, capsys):
    for path in both.values():
        before = (path / MANIFEST_NAME).read_bytes()
        try:
            code = main(["index", "merge-policy", str(path), *flags])
        except SystemExit as exit_:  # argparse refuses a bad value itself
            code = exit_.code
        assert code == 2
        assert "Traceback" not in capsys.readouterr().err
        assert (path / MANIFEST_NAME).read_bytes() == before
