"""Issue 11, from the command line: indexes cannot lose data, damage is detected, bad input exits 2 with a message.

Every test runs `python -m embedkit …` in a subprocess, as a user would, on a tiny random BERT (dense) or the
embedded bm25s backend (BM25).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def embedkit(*args: str | Path, env: dict[str, str] | None = None, preexec=None, timeout: int = 300):
    """Run the CLI in a fresh process; returns the CompletedProcess (stdout/stderr as text)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "embedkit", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, preexec_fn=preexec, cwd=ROOT)


def assert_user_error(result, *needles: str) -> None:
    """Exit status 2, a one-line `embedkit: error:` message (or argparse's usage error), no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def docs(count: int, prefix: str = "d", size: int = 12) -> list[dict]:
    words = "protein cell gene cancer virus study patients treatment river city film music".split()
    return [{"_id": f"{prefix}{i}", "title": words[i % len(words)],
             "text": " ".join(words[(i + j) % len(words)] for j in range(size))} for i in range(count)]


def leftovers(folder: Path) -> list[str]:
    """Siblings of an index folder that a finished command must not leave (lock files are kept on purpose)."""
    return sorted(p.name for p in folder.parent.iterdir()
                  if p.name.startswith(folder.name + ".") and not p.name.endswith(".lock"))


def doc_ids(index: Path) -> set[str]:
    """The live document ids, read the way a search reads them (every segment, deleted rows hidden)."""
    from embedkit.index.dense import DenseIndex
    from embedkit.index.manifest import DenseManifest

    store = DenseIndex(index, DenseManifest.load(index)).docstore
    try:
        return set(store.ids_by_row().values())
    finally:
        store.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from embedkit.training.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("model") / "tiny", seed=5, hidden_size=32, layers=1)


@pytest.fixture(scope="module")
def base_index(tiny_model, tmp_path_factory) -> Path:
    """A dense Flat index over 30 documents, built once through the CLI; tests copy it."""
    folder = tmp_path_factory.mktemp("base")
    corpus = write_jsonl(folder / "corpus.jsonl", docs(30))
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--device", "cpu",
                      "--out", folder / "index", "--quiet")
    assert result.returncode == 0, result.stderr
    return folder / "index"


@pytest.fixture
def index(base_index, tmp_path) -> Path:
    copy = tmp_path / "indexes" / "idx"
    shutil.copytree(base_index, copy)
    return copy


# --- 1. --overwrite replaces only an embedkit index ---------------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_an_index(tmp_path, tiny_model):
    data = tmp_path / "data"
    corpus = write_jsonl(data / "corpus.jsonl", docs(5))
    (data / "notes.txt").write_text("my notes")
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--out", data, "--overwrite")
    assert_user_error(result, "is not an embedkit index", "manifest.json")
    assert sorted(p.name for p in data.iterdir()) == ["corpus.jsonl", "notes.txt"]

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"precious")
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", plain, "--overwrite")
    assert_user_error(result, "is a file")
    assert plain.read_bytes() == b"precious"


def test_overwrite_replaces_an_earlier_index(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(5))
    out = tmp_path / "bm25"
    for _ in (1, 2):  # the second build replaces the first
        result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                          "--out", out, "--overwrite")
        assert result.returncode == 0, result.stderr
    assert leftovers(out) == []
    assert json.loads((out / "manifest.json").read_text())["num_docs"] == 5


# --- 2. a kill at every step of an update's commit, and of a compaction's folder swap -------------------------

STEPS = ("filled", "synced", "committed", "old-moved", "new-moved", "parent-synced", "swept")


@pytest.mark.parametrize("step", ("collected", "segment-written", "segment-synced", "manifest-swapped"))
def test_update_killed_at_every_step_recovers(index, step):
    from embedkit.index.segments import SEGMENT_STEPS

    assert step in SEGMENT_STEPS
    before = doc_ids(index)
    result = embedkit("index", "remove", index, "--id", "d3", "--id", "d7", env={"EMBEDKIT_CRASH_AT": step})
    assert result.returncode == 137, result.stderr  # killed abruptly, no cleanup ran
    info = embedkit("index", "info", index)
    assert info.returncode == 0, info.stderr
    after = doc_ids(index)
    expected_new = before - {"d3", "d7"}
    assert after == (expected_new if step == "manifest-swapped" else before)  # the manifest swap is the commit
    assert json.loads(info.stdout)["num_docs"] == len(after)
    assert embedkit("index", "verify", index).returncode == 0
    # The next update collects what the killed one wrote; then only referenced files (and those the last
    # commit replaced, kept for readers of the state before it) remain.
    previous = set(json.loads((index / "manifest.json").read_text())["files"])
    result = embedkit("index", "remove", index, "--id", "d1")
    assert result.returncode == 0, result.stderr
    assert leftovers(index) == []
    assert doc_ids(index) == after - {"d1"}
    current = set(json.loads((index / "manifest.json").read_text())["files"])
    assert {p.name for p in index.iterdir()} - {"manifest.json"} <= current | previous
    assert embedkit("index", "verify", index).returncode == 0


@pytest.mark.parametrize("step", STEPS)
def test_compaction_killed_at_every_step_recovers(index, step):
    from embedkit.io import SWAP_STEPS

    assert set(STEPS) == set(SWAP_STEPS)
    assert embedkit("index", "remove", index, "--id", "d3", "--id", "d7").returncode == 0
    before = doc_ids(index)
    assert json.loads((index / "manifest.json").read_text())["segments"]  # the update wrote segments
    result = embedkit("index", "compact", index, env={"EMBEDKIT_CRASH_AT": step})
    assert result.returncode == 137, result.stderr
    # The next command on the path (a read) recovers the folder: old or new layout, the same documents.
    info = embedkit("index", "info", index)
    assert info.returncode == 0, info.stderr
    assert doc_ids(index) == before
    segmented = bool(json.loads(info.stdout).get("segments"))
    if step in ("filled", "synced"):
        assert segmented  # never completed: rolled back
    elif step != "committed":
        assert not segmented  # the new folder was complete: rolled forward / kept
    result = embedkit("index", "remove", index, "--id", "d1")
    assert result.returncode == 0, result.stderr
    assert leftovers(index) == []
    assert doc_ids(index) == before - {"d1"}
    assert embedkit("index", "verify", index).returncode == 0


def test_build_killed_mid_swap_is_not_deleted_by_the_next_build(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(8))
    out = tmp_path / "bm25"
    assert embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                    "--out", out).returncode == 0
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus, "--out", out,
                      "--overwrite", env={"EMBEDKIT_CRASH_AT": "old-moved"})
    assert result.returncode == 137
    assert not out.exists()  # only NAME.old-* and NAME.new-* are left
    search = embedkit("search", out, "gene cancer", "--k", "3")
    assert search.returncode == 0, search.stderr  # rolled forward to the finished build
    assert leftovers(out) == []


# --- 3. updates through a symlink lock and swap the real folder ---------------------------------------------


def test_concurrent_updates_through_a_symlink_share_one_lock(index, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(index, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "embedkit", "index", "remove", str(path), "--id", doc_id],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for path, doc_id in ((index, "d2"), (link, "d4"), (index, "d5"), (link, "d6"))]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert link.is_symlink() and link.resolve() == index.resolve()
    assert doc_ids(index) == {f"d{i}" for i in range(30)} - {"d2", "d4", "d5", "d6"}
    assert leftovers(index) == [] and leftovers(link) == []


# --- 5. ids and run tags that a TREC run file cannot hold ---------------------------------------------------


# A space is refused when the index is built (document #2); a tab or newline already by the corpus reader
# (line 2, field '_id'), since a control character breaks tab-separated files as well as TREC runs.
@pytest.mark.parametrize(("bad_id", "where"), [("a b", "document #2"), ("a\tb", "line 2"), ("a\nb", "line 2")])
def test_ids_with_whitespace_are_refused_at_build(tmp_path, bad_id, where):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "ok", "text": "fine"}, {"_id": bad_id, "text": "x"}])
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "out")
    assert_user_error(result, where, "TREC")
    assert not (tmp_path / "out").exists()


def test_dense_build_refuses_whitespace_ids_too(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "doc 1", "text": "x"}])
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--out", tmp_path / "out")
    assert_user_error(result, "'doc 1'", "whitespace")


def test_tags_and_query_ids_with_spaces_are_refused(index, tmp_path):
    result = embedkit("search", index, "gene", "--tag", "my run", "-o", tmp_path / "run.trec")
    assert_user_error(result, "run tag")
    assert embedkit("fuse", "a.trec", "b.trec", "--tag", "two words", "-o", tmp_path / "f.trec").returncode == 2
    queries = tmp_path / "queries.tsv"
    queries.write_text("q 1\tgene cancer\n", encoding="utf-8")
    result = embedkit("search", index, "--queries", queries, "-o", tmp_path / "run.trec")
    assert_user_error(result, "query id")
    assert not (tmp_path / "run.trec").exists()


def test_every_run_file_written_is_valid_trec(index, tmp_path):
    run = tmp_path / "run.trec"
    assert embedkit("search", index, "gene cancer", "--k", "5", "-o", run).returncode == 0
    lines = run.read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split()) == 6 for line in lines)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\t{lines[0].split()[2]}\t1\n")  # judges a retrieved document
    assert embedkit("eval", "--run", run, "--qrels", qrels).returncode == 0


# --- 6. damage is detected: checksums and counts ------------------------------------------------------------


def test_zeroed_bytes_in_the_faiss_file_are_detected(index):
    faiss_file = index / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, different bytes
    faiss_file.write_bytes(bytes(data))
    assert_user_error(embedkit("index", "verify", index), "index.faiss", "checksum")
    # An update reads and hashes only what it changes (issue 24): a removal writes a deletion file beside the
    # damaged FAISS file and never copies it, so the damage stays where `index verify` reports it.
    assert embedkit("index", "remove", index, "--id", "d1").returncode == 0
    assert_user_error(embedkit("index", "verify", index), "index.faiss", "checksum")
    assert (index / "index.faiss").read_bytes() == bytes(data)
    assert leftovers(index) == []


def test_a_deleted_docstore_row_is_detected_on_load(index):
    db = sqlite3.connect(index / "docstore.sqlite")
    db.execute("DELETE FROM docs WHERE id = 'd4'")
    db.commit()
    db.execute("VACUUM")
    db.close()
    size = (index / "docstore.sqlite").stat().st_size
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["files"]["docstore.sqlite"]["size"] = size  # even when the size is made to match
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(embedkit("search", index, "gene"), "29 documents", "manifest says 30")
    assert_user_error(embedkit("index", "verify", index), "docstore.sqlite")


def test_a_wrong_document_count_in_the_manifest_is_detected(index):
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["num_docs"] = 31
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(embedkit("search", index, "gene"), "manifest says 31")
    assert_user_error(embedkit("index", "info", index), "manifest says 31")


def test_verify_passes_on_an_intact_index(index):
    result = embedkit("index", "verify", index)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "30 documents" in result.stdout


# --- 7. factory strings FAISS would abort on --------------------------------------------------------------


@pytest.mark.parametrize("factory", ["HNSW0", "HNSW1", "IVF4,PQ4x0", "IVF0,Flat", "IVF2_HNSW0,Flat"])
def test_factories_that_crash_faiss_are_refused(tmp_path, tiny_model, factory):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(40))
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--index-factory", factory,
                      "--out", tmp_path / "out")
    assert_user_error(result, "factory")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["corpus.jsonl"]


# --- 8. bad numbers, -o on a folder, disk full --------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--max-length", "-5"], ["--max-length", "0"],
                                   ["--train-sample", "0"]])
def test_bad_numbers_exit_2(tmp_path, tiny_model, flags):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(5))
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--out", tmp_path / "o", *flags)
    assert_user_error(result, flags[0])
    assert not (tmp_path / "o").exists()


def test_search_output_pointing_at_a_folder(index, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    assert_user_error(embedkit("search", index, "gene", "-o", folder), "is a folder")


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_during_build_and_add_keeps_the_old_index(index, tmp_path, tiny_model):
    big = write_jsonl(tmp_path / "big.jsonl", docs(300, prefix="n", size=120))
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    result = embedkit("index", "add", index, "--corpus", big, "--device", "cpu", preexec=_limit_file_size(60_000))
    assert_user_error(result, "no space left", str(index))
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert leftovers(index) == []
    result = embedkit("index", "build", "--corpus", big, "--model", tiny_model, "--out", index, "--overwrite",
                      preexec=_limit_file_size(60_000))
    assert_user_error(result, "no space left")
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert leftovers(index) == []


# --- 9. k, nprobe, merge duplicates ------------------------------------------------------------------------


@pytest.mark.parametrize("k", ["0", "-1"])
def test_k_below_one_is_refused(index, k):
    assert_user_error(embedkit("search", index, "gene", "--k", k), "--k")


def test_negative_nprobe_is_a_clear_error(index):
    result = embedkit("search", index, "gene", "--nprobe", "-5")
    assert_user_error(result, "--nprobe", "at least 1")
    assert "Error in" not in result.stderr and "faiss::" not in result.stderr  # not FAISS's raw C++ text


def test_merge_with_a_duplicate_id_names_the_id_and_both_inputs(index, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(index, other)
    result = embedkit("index", "merge", index, other, "--out", tmp_path / "merged")
    assert_user_error(result, "'d0'", str(index), str(other))
    assert "UNIQUE" not in result.stderr
    assert not (tmp_path / "merged").exists()


# --- the index model from the command line ----------------------------------------------------------------


def test_bm25_build_rejects_dense_only_flags(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(5))
    result = embedkit("index", "build", "--kind", "bm25", "--corpus", corpus, "--out", tmp_path / "o",
                      "--index-factory", "HNSW32", "--batch-size", "64")
    assert_user_error(result, "--index-factory", "--batch-size", "--kind bm25")
    result = embedkit("index", "build", "--corpus", corpus, "--out", tmp_path / "o", "--k1", "1.2")
    assert_user_error(result, "--k1", "--kind dense")


def test_bm25_index_refuses_dense_search_options(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(5))
    out = tmp_path / "bm25"
    assert embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                    "--out", out).returncode == 0
    assert_user_error(embedkit("search", out, "gene", "--nprobe", "4"), "nprobe")
    assert_user_error(embedkit("search", out, "gene", "--backend", "torch"), "dense indexes only")
    # BM25 indexes are updated by segments (tests/test_bm25_updates.py); a model is still a dense-only option
    assert_user_error(embedkit("index", "add", out, "--corpus", corpus, "--model", "some/model"), "no model")
