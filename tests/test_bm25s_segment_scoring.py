"""Issue 24, bm25s: an updated index is searched from its segments' postings, not re-indexed, and gives the
numbers of an index rebuilt from its live documents bit for bit: the same ids, in the same order (ties broken
the same way), with the same float32 scores (`==`, not a tolerance).

The vocabulary is tiny and documents repeat, so most scores tie and which tied documents make the top k
depends on the whole score vector, as bm25s's selection sees it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.cli import main
from embedkit.errors import IndexFormatError
from embedkit.index import Index
from embedkit.index.kinds import verify_index
from embedkit.index.manifest import BM25Manifest
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical.bm25s_backend import _tokenize
from embedkit.lexical.bm25s_scoring import SegmentedBM25
from embedkit.lexical.bm25s_segments import POSTINGS_FILES, SEGMENTS_DIR, TF_COUNTS, TF_DOCS, TF_INDPTR
from embedkit.lexical.settings import BM25MergePolicy
from embedkit.lexical.update import add_documents, compact_index, remove_documents
from tests.test_bm25_updates import doc, live_documents

NEVER = BM25MergePolicy(max_segments=None, max_deleted_fraction=None)
WORDS = ["alpha", "beta", "gamma", "delta", "the"]
# repeated tokens, a token no document has, a query of stopwords only, the same words in another order
QUERIES = ["alpha", "beta gamma", "alpha alpha beta", "gamma beta", "delta zeta alpha", "zeta", "the",
           "alpha beta gamma delta"]


def build(path: Path, texts: list[str], **extra) -> Path:
    return build_bm25_index([doc(f"d{i}", text.split()) for i, text in enumerate(texts)], path,
                            BM25Settings(backend="bm25s", k1=1.2, b=0.75, merge=NEVER, **extra), overwrite=True)


def hits(path: Path, k: int) -> list[list[tuple[str, float]]]:
    found = Index.load(path).search(QUERIES, k=k, with_text=False)
    return [[(hit.id, hit.score) for hit in query] for query in found]


def assert_bitwise_rebuild(path: Path, scratch: Path, k: int = 4) -> None:
    """`path` answers every query exactly as an index built from its live documents (in row order) does."""
    documents = live_documents(path)
    got = hits(path, k)
    if not documents:
        assert got == [[] for _ in QUERIES]
        return
    rebuilt = build_bm25_index(documents, scratch / "rebuilt", BM25Manifest.load(path).settings, overwrite=True)
    assert got == hits(rebuilt, k)


def searcher(path: Path):
    return Index.load(path).searcher


texts = st.lists(st.sampled_from(["alpha beta", "alpha", "beta gamma gamma", "delta alpha alpha", "the", ""]),
                 min_size=1, max_size=6)
ids = st.sampled_from([f"d{i}" for i in range(6)])
steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(ids, st.sampled_from(["alpha beta", "gamma", "delta beta alpha",
                                                                       "the alpha", "beta beta"])),
                                       min_size=1, max_size=3)),
    st.tuples(st.just("remove"), st.lists(ids, min_size=1, max_size=3)),
    st.tuples(st.just("compact")),
), min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=texts, operations=steps, k=st.sampled_from([1, 3, 8]))
def test_updates_score_bit_for_bit_like_a_rebuild(tmp_path_factory, first, operations, k):
    scratch = tmp_path_factory.mktemp("bm25s-scoring")
    path = build(scratch / "idx", first)
    for operation in operations:
        if operation[0] == "add":
            add_documents(path, [doc(i, text.split()) for i, text in operation[1]])
        elif operation[0] == "remove":
            remove_documents(path, operation[1])
        else:
            compact_index(path)
        assert_bitwise_rebuild(path, scratch, k)
    verify_index(path)


def test_ties_break_as_in_a_rebuild(tmp_path):
    """Forty identical documents tie on every query; removals and additions among them move which four win."""
    path = build(tmp_path / "idx", ["alpha beta"] * 40 + ["gamma alpha"] * 5)
    add_documents(path, [doc(f"n{i}", ["alpha", "beta"]) for i in range(10)])
    remove_documents(path, ["d3", "d17", "d39", "d41"])
    add_documents(path, [doc("d5", ["alpha", "beta"]), doc("n2", ["beta", "alpha"])])  # upserts: moved last
    assert len(BM25Manifest.load(path).segments) == 3
    assert searcher(path).segmented is not None
    for k in (1, 4, 40, 60):
        assert_bitwise_rebuild(path, tmp_path, k)


def test_deleted_documents_leave_the_statistics(tmp_path):
    """Document frequency, document count and average length are the live documents' own."""
    path = build(tmp_path / "idx", ["alpha beta gamma delta", "alpha", "beta beta", "gamma"])
    before = hits(path, 4)
    remove_documents(path, ["d0"])  # the long document: avgdl falls, df of every word falls
    add_documents(path, [doc("n0", ["alpha", "alpha", "delta"])])
    scorer = searcher(path).segmented
    live = _tokenize([d.joined() for d in live_documents(path)], BM25Settings(backend="bm25s"), return_ids=False)
    df = Counter(token for tokens in live for token in set(tokens))
    assert scorer.num_docs == len(live) == 4
    assert scorer.avgdl == np.array([len(tokens) for tokens in live]).mean()
    assert {word: scorer.df(word) for word in ["alpha", "beta", "gamma", "delta"]} == {
        word: df[word] for word in ["alpha", "beta", "gamma", "delta"]}
    assert hits(path, 4) != before
    assert_bitwise_rebuild(path, tmp_path)


def test_a_word_only_deleted_documents_had_is_unknown(tmp_path):
    path = build(tmp_path / "idx", ["zeta alpha", "alpha beta", "beta"])
    assert [i for i, _ in hits(path, 3)[QUERIES.index("zeta")]] == ["d0"]
    remove_documents(path, ["d0"])
    assert searcher(path).segmented.df("zeta") == 0
    found = hits(path, 3)
    assert found[QUERIES.index("zeta")] == []
    assert [i for i, _ in found[QUERIES.index("delta zeta alpha")]] == ["d1"]
    assert_bitwise_rebuild(path, tmp_path, 3)


def test_opening_an_updated_index_indexes_nothing(tmp_path, monkeypatch):
    """No bm25s index in memory: the searcher holds the memory-mapped postings of each segment."""
    import bm25s

    path = build(tmp_path / "idx", ["alpha beta", "gamma", "delta alpha"])
    add_documents(path, [doc("n0", ["alpha", "gamma"])])

    def refuse(*args, **kwargs):
        raise AssertionError("bm25s indexed documents while an updated index was opened")

    monkeypatch.setattr(bm25s.BM25, "index", refuse)
    opened = searcher(path)
    assert opened.retriever is None and isinstance(opened.segmented, SegmentedBM25)
    assert [type(live.postings.docs) for live in opened.segmented.segments] == [np.memmap, np.memmap]
    mine = hits(path, 2)
    monkeypatch.undo()  # the rebuild indexes
    assert_bitwise_rebuild(path, tmp_path, 2)
    assert mine == hits(path, 2)


def test_folders_updated_before_postings_existed(tmp_path):
    """Segments with token files only (written by the previous version) derive their postings at open."""
    path = build(tmp_path / "idx", ["alpha beta", "alpha alpha", "gamma beta"])
    add_documents(path, [doc("n0", ["beta"]), doc("d1", ["alpha", "delta"])])
    for segment in (path / SEGMENTS_DIR).iterdir():
        for name in POSTINGS_FILES:
            (segment / name).unlink()
    manifest = BM25Manifest.load(path)
    manifest.record_files(path)
    manifest.save(path)
    assert_bitwise_rebuild(path, tmp_path)
    remove_documents(path, ["d0"])  # an update keeps old segments as they are; its new ones have postings
    assert_bitwise_rebuild(path, tmp_path)


def _damage(path: Path, name: str, array: np.ndarray) -> Path:
    """Replace one postings file of segment 000000, with a manifest that matches it (a shared folder's can)."""
    target = path / SEGMENTS_DIR / "000000" / name
    np.save(target, array)
    manifest = BM25Manifest.load(path)
    manifest.record_files(path)
    manifest.save(path)
    return target


@pytest.mark.parametrize(("name", "array", "message"), [
    (TF_INDPTR, np.array([0, 1], dtype=np.int64), "entries for"),
    (TF_INDPTR, np.array([0.0, 1.0, 2.0, 3.0]), "float64"),
    (TF_INDPTR, np.array([0, 3, 2, 4], dtype=np.int64), "do not divide"),
    (TF_DOCS, np.array([0, 1, 2, 9], dtype=np.int32), "not ascending documents"),
    (TF_DOCS, np.array([[0, 1], [1, 2]], dtype=np.int32), "2-dimensional"),
    (TF_COUNTS, np.array([1, 1, 0, 1], dtype=np.int32), "counts below 1"),
    (TF_COUNTS, np.array([{"x": 1}], dtype=object), "damaged or missing"),  # a pickle: never loaded
])
def test_damaged_postings_name_the_file(tmp_path, capsys, name, array, message):
    path = build(tmp_path / "idx", ["alpha beta", "alpha", "gamma"])
    remove_documents(path, ["d1"])  # the query still reads every token's postings
    target = _damage(path, name, array)
    with pytest.raises(IndexFormatError, match=message) as error:
        Index.load(path).search(["alpha beta gamma"], k=3)
    assert str(target) in str(error.value)
    assert main(["search", str(path), "alpha beta gamma"]) == 2
    assert str(target) in capsys.readouterr().err


def test_missing_postings_file_is_named(tmp_path):
    path = build(tmp_path / "idx", ["alpha beta", "alpha"])
    add_documents(path, [doc("n0", ["beta"])])
    shutil.move(path / SEGMENTS_DIR / "000001" / TF_DOCS, tmp_path / "elsewhere.npy")
    manifest = BM25Manifest.load(path)
    manifest.record_files(path)
    manifest.save(path)
    with pytest.raises(IndexFormatError, match=f"{SEGMENTS_DIR}/000001/{TF_DOCS}"):
        Index.load(path).search(["alpha"], k=2)


def test_postings_that_disagree_with_the_tokens_are_damage(tmp_path):
    """A deleted document's terms are read from its tokens; postings that never held them cannot be right."""
    path = build(tmp_path / "idx", ["alpha beta", "gamma"])
    remove_documents(path, ["d0"])
    # postings of segment 000000 claiming that "alpha" (token 0) and "beta" (token 1) are in no document
    _damage(path, TF_INDPTR, np.array([0, 0, 0, 0], dtype=np.int64))
    _damage(path, TF_DOCS, np.zeros(0, dtype=np.int32))
    _damage(path, TF_COUNTS, np.zeros(0, dtype=np.int32))
    with pytest.raises(IndexFormatError, match="do not hold the tokens"):
        Index.load(path).search(["alpha"], k=2)


def test_a_reload_keeps_unchanged_segments_mapped(tmp_path):
    """After an update a server's reload (`reopen_index`) reuses the postings it maps for segments the update
    only hard-linked; new segments are read, and a compacted folder is read whole again."""
    from embedkit.index.reopen import reopen_index

    path = build(tmp_path / "idx", ["alpha beta", "gamma", "delta alpha"])
    add_documents(path, [doc("n0", ["alpha", "gamma"])])
    served = Index.load(path)
    served.search(["alpha"], k=2)
    first = [live.postings for live in served.searcher.segmented.segments]
    remove_documents(path, ["d0"])
    add_documents(path, [doc("n1", ["beta"])])
    reloaded, _ = reopen_index(path, served)
    again = [live.postings for live in reloaded.searcher.segmented.segments]
    assert again[0] is first[0] and again[1] is first[1] and len(again) == 3
    assert_bitwise_rebuild(path, tmp_path, 3)
    compact_index(path)
    add_documents(path, [doc("n2", ["gamma"])])
    fresh = reopen_index(path, reloaded)[0].searcher.segmented.segments
    assert not {id(live.postings) for live in fresh} & {id(postings) for postings in again}
    assert_bitwise_rebuild(path, tmp_path, 3)


def test_verify_reads_every_posting(tmp_path, capsys):
    """Postings that open cleanly but are not the tokens' (a swapped count) fail `index verify`, naming the file."""
    path = build(tmp_path / "idx", ["alpha beta alpha", "beta"])
    add_documents(path, [doc("n0", ["gamma"])])
    assert main(["index", "verify", str(path)]) == 0
    capsys.readouterr()
    target = _damage(path, TF_COUNTS, np.array([1, 1, 1], dtype=np.int32))  # alpha twice in d0, not once
    assert Index.load(path).search("alpha", k=1)  # plausible postings: opening cannot tell
    assert main(["index", "verify", str(path)]) == 2
    assert str(target) in capsys.readouterr().err


def test_varied_lengths_and_many_queries_equal_a_rebuild(tmp_path):
    """Documents of 1 to 120 words of a 300-word vocabulary, upserts and removals in three segments: 120 queries
    of 1 to 8 words (repeats included) give a rebuild's hits to the last bit."""
    import random

    rng = random.Random(11)
    words = [f"w{i}" for i in range(300)]

    def text() -> list[str]:
        return rng.choices(words, k=rng.randint(1, 120))

    path = build(tmp_path / "idx", [" ".join(text()) for _ in range(1200)])
    for round_ in range(2):
        add_documents(path, [doc(f"n{round_}-{i}", text()) for i in range(100)]
                      + [doc(f"d{rng.randrange(1200)}", text()) for _ in range(40)])
        remove_documents(path, [f"d{rng.randrange(1200)}" for _ in range(80)])
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(120)]
    mine = Index.load(path).search(queries, k=15, with_text=False)
    assert Index.load(path).searcher.segmented is not None
    rebuilt = build_bm25_index(live_documents(path), tmp_path / "rebuilt", BM25Manifest.load(path).settings)
    theirs = Index.load(rebuilt).search(queries, k=15, with_text=False)
    assert [[(hit.id, hit.score) for hit in hits] for hits in mine] == \
        [[(hit.id, hit.score) for hit in hits] for hits in theirs]
