"""Issue 24, BM25: `embedkit index add/remove/compact` on BM25 indexes, for both backends.

The claim tested: after any sequence of adds, upserts, removals and compactions, a search gives what an index
built from scratch from the same live documents (in the order the index holds them: oldest first, a replaced
document counting as new) gives — the same ids in the same order (ties included) and the same scores.
bm25s always; pyserini whenever no segment records deleted documents (Lucene's term statistics count them until
their segment is merged), and always after `compact`. Both sides of that rule are tested.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from embedkit.data.corpus import Document
from embedkit.errors import EmbedkitError
from embedkit.index import Index
from embedkit.index.docstore import DOCSTORE_NAME
from embedkit.index.kinds import verify_index
from embedkit.index.manifest import BM25Manifest
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical.index import open_docstore
from embedkit.lexical.java import java_available
from embedkit.lexical.settings import BM25MergePolicy
from embedkit.lexical.update import add_documents, compact_index, remove_documents

needs_java = pytest.mark.skipif(not java_available(), reason="pyserini needs a Java 21+ runtime")

WORDS = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "the"]
QUERIES = [*WORDS[:-1], "alpha beta", "gamma delta omega", "sigma the alpha"]
IDS = [f"d{i}" for i in range(8)]


def doc(doc_id: str, words: list[str]) -> Document:
    return Document(id=doc_id, title="", text=" ".join(words))


def live_documents(path: Path) -> list[Document]:
    """The index's documents in row order: the order a rebuild indexes them in."""
    store = open_docstore(path, BM25Manifest.load(path))  # its parts, deleted rows left out
    try:
        return [document for _, document in store.iter_documents()]
    finally:
        store.close()


def results(path: Path, k: int = 20) -> list[list[tuple[str, float]]]:
    index = Index.load(path)
    return [[(hit.id, hit.score) for hit in hits] for hits in index.search(QUERIES, k=k, with_text=False)]


def assert_same_as_rebuild(path: Path, scratch: Path) -> None:
    manifest = BM25Manifest.load(path)
    documents = live_documents(path)
    got = results(path)
    if not documents:
        assert got == [[] for _ in QUERIES]
        return
    rebuilt = build_bm25_index(documents, scratch / "rebuilt", manifest.settings, overwrite=True)
    want = results(rebuilt)
    for query, mine, theirs in zip(QUERIES, got, want, strict=True):
        assert [i for i, _ in mine] == [i for i, _ in theirs], (query, mine, theirs)
        assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], rel=1e-5, abs=1e-6), (query, mine, theirs)


words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=5)
documents = st.lists(st.tuples(st.sampled_from(IDS), words), min_size=1, max_size=4)
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), documents, st.booleans()),
    st.tuples(st.just("remove"), st.lists(st.sampled_from([*IDS, "nope"]), min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("compact")),
), min_size=1, max_size=4)
first = st.lists(words, min_size=2, max_size=5)


def run(path: Path, operation: tuple) -> None:
    if operation[0] == "add":
        add_documents(path, [doc(doc_id, text) for doc_id, text in operation[1]], merge=operation[2])
    elif operation[0] == "remove":
        remove_documents(path, operation[1], merge=operation[2])
    else:
        compact_index(path)


def build(path: Path, texts: list[list[str]], backend: str, **extra) -> Path:
    # `the` alone has no indexed term: documents and corpora without terms are part of what is drawn
    return build_bm25_index([doc(f"d{i}", text) for i, text in enumerate(texts)], path,
                            BM25Settings(backend=backend, k1=1.2, b=0.75, **extra), overwrite=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=first, steps=operations)
def test_bm25s_updates_equal_a_rebuilt_index(tmp_path_factory, texts, steps):
    scratch = tmp_path_factory.mktemp("bm25s-updates")
    path = build(scratch / "idx", texts, "bm25s")
    for operation in steps:
        run(path, operation)
        assert_same_as_rebuild(path, scratch)
    verify_index(path)


@needs_java
# Each example starts Lucene writers several times: few examples, and no shrinking (minutes at this speed).
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(texts=first, steps=operations)
def test_pyserini_updates_equal_a_rebuilt_index_without_deletions(tmp_path_factory, texts, steps):
    scratch = tmp_path_factory.mktemp("lucene-updates")
    path = build(scratch / "idx", texts, "pyserini")
    for operation in steps:
        run(path, operation)
        if not any(segment.deleted for segment in BM25Manifest.load(path).segments):
            assert_same_as_rebuild(path, scratch)
    compact_index(path)
    assert len(BM25Manifest.load(path).segments) <= 1  # none when every document was removed
    assert not any(segment.deleted for segment in BM25Manifest.load(path).segments)
    assert_same_as_rebuild(path, scratch)
    verify_index(path)


@needs_java
def test_pyserini_deleted_documents_count_in_scores_until_compact(tmp_path):
    """The other side of the rule: Lucene's statistics still count a deleted document, so scores move."""
    texts = [["alpha", "beta"], ["alpha", "gamma"], ["alpha"], ["delta", "sigma"], ["omega"], ["sigma"]]
    path = build(tmp_path / "idx", texts, "pyserini", merge=BM25MergePolicy(max_deleted_fraction=None))
    report = remove_documents(path, ["d1"])
    assert not report.compacted and [s.deleted for s in report.segments] == [1]
    rebuilt = build_bm25_index(live_documents(path), tmp_path / "rebuilt", BM25Manifest.load(path).settings)
    mine, theirs = results(path)[0], results(rebuilt)[0]  # "alpha": its df is 3 with the deleted copy, 2 without
    assert [i for i, _ in mine] == [i for i, _ in theirs] == ["d2", "d0"]
    assert mine[0][1] < theirs[0][1]  # a higher document frequency: a lower idf
    assert compact_index(path).segments[0].deleted == 0
    assert_same_as_rebuild(path, tmp_path)


def test_bm25s_update_writes_only_the_change(tmp_path):
    """Old segments are hard links of the old files (not copies, not re-hashed); the new segment is new."""
    path = build(tmp_path / "idx", [["alpha", "beta"], ["gamma"], ["delta"]], "bm25s",
                 merge=BM25MergePolicy(max_segments=None, max_deleted_fraction=None))
    old_tokens = path / "bm25s-segments" / "000000" / "tokens.npy"
    inode = old_tokens.stat().st_ino
    report = add_documents(path, [doc("d9", ["omega", "alpha"]), doc("d1", ["sigma"])])
    assert (report.added, report.replaced) == (1, 1)
    assert [(s.name, s.documents, s.deleted, s.first_row) for s in report.segments] == [
        ("000000", 3, 1, 0), ("000001", 2, 0, 3)]
    assert old_tokens.stat().st_ino == inode and old_tokens.stat().st_nlink == 1  # the old folder is gone
    assert not (path / "bm25s").exists()  # the saved matrices held the old statistics
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["history"][-1]["action"] == "add" and len(manifest["segments"]) == 2
    report = remove_documents(path, ["d0", "nope"])
    assert report.removed == 1 and report.missing == ["nope"]
    assert [s.deleted for s in report.segments] == [2, 0]
    assert_same_as_rebuild(path, tmp_path)
    report = compact_index(path)
    assert [(s.documents, s.deleted, s.first_row) for s in report.segments] == [(3, 0, 0)]
    assert (path / "bm25s").is_dir()  # searches memory-map the matrices again
    assert_same_as_rebuild(path, tmp_path)
    assert "1 segment" in verify_index(path).summary()


def test_folder_built_before_segments_converts_on_first_update(tmp_path):
    path = build(tmp_path / "idx", [["alpha", "beta"], ["gamma", "alpha"], ["delta"]], "bm25s")
    # today's build minus what this version adds: no token segments, no segment list
    shutil.rmtree(path / "bm25s-segments")
    manifest = BM25Manifest.load(path)
    manifest.segments = []
    manifest.record_files(path)
    manifest.save(path)
    assert results(path)[0] == results(path)[0] and verify_index(path)  # opens unchanged
    add_documents(path, [doc("d7", ["alpha", "alpha"])])
    assert [s.name for s in BM25Manifest.load(path).segments] == ["000000", "000001"]
    assert_same_as_rebuild(path, tmp_path)


def test_update_refuses_damage_and_bad_input(tmp_path):
    path = build(tmp_path / "idx", [["alpha"], ["beta"]], "bm25s")
    with pytest.raises(EmbedkitError, match="id 'a b'"):
        add_documents(path, [doc("a b", ["gamma"])])
    with pytest.raises(EmbedkitError, match="no model"):
        from embedkit.index.kinds import kind_of

        kind_of(path).add(path, [doc("x", ["gamma"])], model="some/model")
    with open(path / DOCSTORE_NAME, "r+b") as handle:  # same size, other bytes
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    # An update hashes only what it writes (its cost follows the change): the damaged part is linked, not read
    # whole, and keeps the checksum recorded for it, so `index verify` still names it afterwards.
    remove_documents(path, ["d0"], merge=False)  # (a compaction would read and rewrite every part)
    with pytest.raises(EmbedkitError, match=f"{DOCSTORE_NAME} does not match the checksum"):
        verify_index(path)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_add_remove_compact_and_merge_policy(tmp_path, capsys):
    from embedkit.cli import main
    from embedkit.lexical.update import set_merge_policy
    from tests.helpers import write_jsonl

    path = build(tmp_path / "idx", [["alpha", "beta"], ["gamma"], ["delta"], ["sigma"]], "bm25s")
    policy = set_merge_policy(path, never=True)  # what `index compact --merge-policy never --policy-only` records
    assert (policy.max_segments, policy.max_deleted_fraction) == (None, None)
    assert BM25Manifest.load(path).settings.merge == policy
    corpus = write_jsonl(tmp_path / "new.jsonl", [{"_id": "d1", "title": "", "text": "omega"}])
    assert main(["index", "add", str(path), "--corpus", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1 replaced; 2 segments \(000000: 4 documents, 1 deleted, [\d,]+ bytes; 000001: 1 documents, "
                     r"[\d,]+ bytes\)", out), out
    (tmp_path / "ids.txt").write_text("d0\nd3\nnope\n")
    assert main(["index", "remove", str(path), "--ids", str(tmp_path / "ids.txt")]) == 0
    out = capsys.readouterr().out
    assert "2 removed" in out and "not in the index: nope" in out and "after compacting" not in out
    assert main(["index", "info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["documents"], s["deleted"]) for s in info["segments"]] == [("000000", 4, 3),
                                                                                    ("000001", 1, 0)]
    assert main(["index", "compact", str(path), "--index-factory", "HNSW32"]) == 2
    assert "--index-factory applies to dense indexes" in capsys.readouterr().err
    assert main(["index", "add", str(path), "--corpus", str(corpus), "--model", "x"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["index", "compact", str(path)]) == 0
    assert "compact: 2 documents now" in capsys.readouterr().out
    set_merge_policy(path, max_deleted_fraction=0.5)  # back on: the defaults, with this limit
    assert BM25Manifest.load(path).settings.merge == BM25MergePolicy(max_deleted_fraction=0.5)
    assert main(["index", "compact", str(path), "--merge-policy", "never", "--policy-only"]) == 0
    assert BM25Manifest.load(path).settings.merge == BM25MergePolicy(max_segments=None, max_deleted_fraction=None)
    assert main(["index", "compact", str(path), "--max-segments", "3", "--policy-only"]) == 0
    assert BM25Manifest.load(path).settings.merge == BM25MergePolicy(max_segments=3)
    assert "compact" not in BM25Manifest.load(path).history[-1].action  # policy only: nothing compacted
    assert_same_as_rebuild(path, tmp_path)


def test_concurrent_updates_lose_nothing(tmp_path):
    """Updates hold the folder's lock from reading the manifest to the swap: both writers' changes survive."""
    import threading

    path = build(tmp_path / "idx", [["alpha"], ["beta"]], "bm25s")
    errors: list[BaseException] = []

    def writer(doc_id: str) -> None:
        try:
            for round_ in range(3):
                add_documents(path, [doc(f"{doc_id}-{round_}", ["gamma", doc_id])])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    ids = {document.id for document in live_documents(path)}
    assert ids == {"d0", "d1", *(f"{name}-{i}" for name in "xy" for i in range(3))}
    assert_same_as_rebuild(path, tmp_path)
