"""Issue 22, item 10 (data) and the reader hunt that followed: inputs that used to be read into silently wrong
results are refused from the command line with exit 2 and a message naming the file, the line and the field.

- ids holding a control character (NUL, tab, LF, CR, ...) in corpora, queries, qrels and TREC runs;
- a key repeated in one JSON object; NaN/Infinity literals and numbers that overflow a float in JSONL;
- NaN/infinite/unparsable scores in TREC runs, a document listed twice in a run or judged twice differently;
- `fuse --fusion interpolate` never writes NaN and never lifts documents a system did not return.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embedkit.data import read_run
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow  # every test starts the CLI


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bm25")
    corpus = write(folder / "corpus.jsonl", "".join(
        json.dumps({"_id": f"d{i}", "text": text}) + "\n"
        for i, text in enumerate(["cats purr", "dogs bark", "faiss searches vectors"])))
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", folder / "idx")
    assert result.returncode == 0, result.stderr
    return folder / "idx"


# --- ids with control characters ----------------------------------------------------------------------------

RUN = "q1 Q0 d1 1 0.5 t\n"
QRELS = "q1\td1\t1\n"


@pytest.mark.parametrize("name, text, command, needles", [
    ("corpus.jsonl", '{"_id": "d0", "text": "a"}\n{"_id": "d\\u00001", "text": "b"}\n', "build",
     ["corpus.jsonl, line 2", "U+0000 NUL", "(field '_id')"]),
    ("corpus.tsv", "id\ttext\nd\r1\tb\n", "build", ["corpus.tsv, line 2", "U+000D carriage return"]),
    ("queries.jsonl", '{"_id": "q\\t1", "text": "cats"}\n', "search", ["queries.jsonl, line 1", "U+0009 tab",
                                                                       "(field '_id')"]),
    ("qrels.tsv", "q1\td1\t1\nq2\td\x002\t1\n", "eval-qrels", ["qrels.tsv, line 2", "U+0000 NUL"]),
    ("run.trec", "q1 Q0 d1 1 0.5 t\nq1 Q0 d\x002 2 0.4 t\n", "eval-run", ["run.trec, line 2", "U+0000 NUL"]),
])
def test_ids_with_control_characters_are_refused(tmp_path, bm25_index, name, text, command, needles) -> None:
    path = write(tmp_path / name, text)
    if command == "build":
        result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", path,
                          "--out", tmp_path / "idx")
        assert not (tmp_path / "idx").exists()
    elif command == "search":
        result = embedkit("search", bm25_index, "--queries", path, "-o", tmp_path / "run.trec")
        assert not (tmp_path / "run.trec").exists()
    elif command == "eval-qrels":
        result = embedkit("eval", "--run", write(tmp_path / "run.trec", RUN), "--qrels", path)
    else:
        result = embedkit("eval", "--run", path, "--qrels", write(tmp_path / "qrels.tsv", QRELS))
    assert_user_error(result, "control character", *needles)


def test_fuse_refuses_a_run_with_a_nul_id_and_writes_nothing(tmp_path) -> None:
    good = write(tmp_path / "a.trec", RUN)
    bad = write(tmp_path / "b.trec", "q1 Q0 d\x001 1 0.5 t\n")
    assert_user_error(embedkit("fuse", good, bad, "-o", tmp_path / "fused.trec"), "b.trec, line 1", "U+0000 NUL")
    assert not (tmp_path / "fused.trec").exists()


# --- strict JSON ------------------------------------------------------------------------------------------

def train_config(tmp_path: Path, data: Path) -> Path:
    """A training config whose only dataset is `data` (FlagEmbedding jsonl); the data is read before the model."""
    return write(tmp_path / "train.yaml", f"model: no-model-needed\noutput_dir: {tmp_path / 'out'}\n"
                                          f"datasets:\n  - name: flag\n    path: {data}\n")


def test_repeated_json_key_is_refused(tmp_path, bm25_index) -> None:
    corpus = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b", "_id": "d3"}\n')
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "idx")
    assert_user_error(result, "corpus.jsonl, line 2", "key '_id' appears twice")
    queries = write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "cats", "text": "dogs"}\n')
    assert_user_error(embedkit("search", bm25_index, "--queries", queries, "-o", tmp_path / "run.trec"),
                      "queries.jsonl, line 1", "key 'text' appears twice")
    flag = write(tmp_path / "flag.jsonl", '{"query": "q", "pos": ["p"], "neg": ["n"], "meta": {"a": 1, "a": 2}}\n')
    assert_user_error(embedkit("train", "--config", train_config(tmp_path, flag)),
                      "flag.jsonl, line 1", "key 'a' appears twice", "(field 'meta.a')")


@pytest.mark.parametrize("literal, needle", [("NaN", "JSON has no NaN"), ("-Infinity", "JSON has no NaN"),
                                             ("1e999", "too large for a 64-bit float")])
def test_nan_infinity_and_overflowing_numbers_in_jsonl_are_refused(tmp_path, literal, needle) -> None:
    flag = write(tmp_path / "flag.jsonl", '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]}\n'
                                          f'{{"query": "q2", "pos": ["p"], "pos_scores": [0.5, {literal}]}}\n')
    assert_user_error(embedkit("train", "--config", train_config(tmp_path, flag)),
                      "flag.jsonl, line 2", needle, "(field 'pos_scores[1]')")
    assert not (tmp_path / "out").exists()


# --- run scores, duplicates -------------------------------------------------------------------------------

@pytest.mark.parametrize("score, needle", [("nan", "not a finite number"), ("-inf", "not a finite number"),
                                           ("Infinity", "not a finite number"), ("1e999", "too large"),
                                           ("1_0", "not a number")])
def test_run_scores_that_are_not_finite_numbers_are_refused(tmp_path, score, needle) -> None:
    run = write(tmp_path / "run.trec", f"q1 Q0 d1 1 0.9 t\nq1 Q0 d2 2 {score} t\n")
    qrels = write(tmp_path / "qrels.tsv", QRELS)
    assert_user_error(embedkit("eval", "--run", run, "--qrels", qrels), "run.trec, line 2", needle)
    other = write(tmp_path / "other.trec", RUN)
    result = embedkit("fuse", other, run, "--fusion", "interpolate", "-o", tmp_path / "fused.trec")
    assert_user_error(result, "run.trec, line 2", needle)
    assert not (tmp_path / "fused.trec").exists()


def test_a_document_listed_twice_in_a_run_or_judged_twice_differently_is_refused(tmp_path) -> None:
    run = write(tmp_path / "run.trec", "q1 Q0 d1 1 0.9 t\nq1 Q0 d2 2 0.5 t\nq1 Q0 d1 3 0.1 t\n")
    qrels = write(tmp_path / "qrels.tsv", QRELS)
    assert_user_error(embedkit("eval", "--run", run, "--qrels", qrels), "run.trec, line 3", "listed twice",
                      "first on line 1")
    run = write(tmp_path / "run.trec", RUN)
    qrels = write(tmp_path / "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td1\t0\n")
    assert_user_error(embedkit("eval", "--run", run, "--qrels", qrels), "qrels.tsv, line 3", "judged 2 on line 2")
    write(tmp_path / "qrels.tsv", "q1\td1\t1\nq1\td1\t1\n")  # the same judgement twice changes nothing
    assert embedkit("eval", "--run", run, "--qrels", qrels).returncode == 0


@pytest.mark.parametrize("grade, needle", [("1_0", "not an integer"), ("\u0661", "not an integer"),
                                           ("99999999999999999999", "out of range")])
def test_qrels_grades_are_plain_integers_in_range(tmp_path, grade, needle) -> None:
    # int() reads "1_0" as 10 and the Arabic-Indic digit as 1; pytrec_eval fails with a SystemError beyond a long
    qrels = write(tmp_path / "qrels.tsv", f"q1\td1\t{grade}\n")
    assert_user_error(embedkit("eval", "--run", write(tmp_path / "run.trec", RUN), "--qrels", qrels),
                      "qrels.tsv, line 1", needle)


# --- fusion arithmetic ------------------------------------------------------------------------------------

def test_fuse_interpolate_writes_finite_scores_and_keeps_missing_documents_below(tmp_path) -> None:
    # q1: scores near the float limit (their min-max difference overflowed into inf, and inf/inf = NaN);
    # q2: a system with a single hit (min == max) used to give every document it did not return full credit.
    a = write(tmp_path / "a.trec", "q1 Q0 d1 1 1.7e308 a\nq1 Q0 d2 2 -1.7e308 a\nq1 Q0 d3 3 -1.7e308 a\n"
                                   "q2 Q0 x 1 5.0 a\n")
    b = write(tmp_path / "b.trec", "q1 Q0 d2 1 3.0 b\nq1 Q0 d1 2 1.0 b\n"
                                   "q2 Q0 y 1 10.0 b\nq2 Q0 x 2 9.0 b\nq2 Q0 z 3 1.0 b\n")
    for normalization in ("minmax", "zscore"):
        out = tmp_path / f"fused-{normalization}.trec"
        result = embedkit("fuse", a, b, "--fusion", "interpolate", "--normalization", normalization, "-o", out)
        assert result.returncode == 0, result.stderr
        assert "nan" not in out.read_text().lower()
        fused = read_run(out)
        assert all(math.isfinite(score) for scores in fused.values() for score in scores.values())
        assert max(fused["q1"], key=fused["q1"].get) == "d1"  # top of a, second of b
        assert max(fused["q2"], key=fused["q2"].get) == "x"  # the only hit of a, close second of b


def test_fuse_refuses_settings_that_are_not_finite(tmp_path) -> None:
    run = write(tmp_path / "a.trec", RUN)
    assert_user_error(embedkit("fuse", run, run, "--weights", "nan", "1", "-o", tmp_path / "f.trec"), "weights")
    assert_user_error(embedkit("fuse", run, run, "--rrf-k", "inf", "-o", tmp_path / "f.trec"), "rrf_k")
    assert not (tmp_path / "f.trec").exists()


# --- found by the hunt beyond the list ------------------------------------------------------------

def test_duplicate_id_across_files_of_a_corpus_folder_names_both_files(tmp_path) -> None:
    folder = tmp_path / "collection"
    folder.mkdir()
    write(folder / "part1.jsonl", '{"id": "a", "contents": "x"}\n')
    write(folder / "part2.jsonl", '{"id": "b", "contents": "y"}\n{"id": "a", "contents": "z"}\n')
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", folder,
                      "--out", tmp_path / "idx")
    assert_user_error(result, "part2.jsonl, line 2", f"first seen on {folder / 'part1.jsonl'}, line 1")


@pytest.mark.parametrize("header", ["QueryID\tText", "query-id\tquery", "Query ID\tquestion"])
def test_queries_tsv_header_spellings_are_not_read_as_a_query(tmp_path, bm25_index, header) -> None:
    queries = write(tmp_path / "queries.tsv", f"{header}\nq1\tcats\n")
    result = embedkit("search", bm25_index, "--queries", queries, "-o", tmp_path / "run.trec")
    assert result.returncode == 0, result.stderr
    assert "1 queries" in result.stdout
    assert set(read_run(tmp_path / "run.trec")) == {"q1"}


def test_fused_run_keeps_scores_that_differ_only_past_six_decimals_apart(tmp_path) -> None:
    # RRF scores of deep ranks differ in the 7th decimal; written with 6 they tied, and trec_eval (and `eval`)
    # re-sort ties by document id, so the fused ranking that was evaluated was not the one computed.
    import random

    from embedkit.hybrid.fusion import fuse_runs

    rng = random.Random(0)
    pool = [f"d{i}" for i in range(2000)]
    runs = [{"q1": {doc: float(1000 - rank) for rank, doc in enumerate(rng.sample(pool, 1000))}} for _ in range(2)]
    paths = []
    for number, run in enumerate(runs):
        paths.append(write(tmp_path / f"run{number}.trec", "".join(
            f"q1 Q0 {doc} {rank} {score} r{number}\n" for rank, (doc, score) in enumerate(run["q1"].items(), 1))))
    result = embedkit("fuse", *paths, "-o", tmp_path / "fused.trec")
    assert result.returncode == 0, result.stderr
    computed = fuse_runs(runs, k=1000)["q1"]
    written = read_run(tmp_path / "fused.trec")["q1"]
    assert list(written) == list(computed)  # same documents in the same (rank) order
    assert len(set(written.values())) == len(set(computed.values()))  # no new ties
    top_score = (tmp_path / "fused.trec").read_text().splitlines()[0].split()[4]
    assert len(top_score.split(".")[1]) > 6  # as many decimals as the ranking needs, for every line of the query


def test_a_jsonl_file_with_carriage_return_line_endings_says_so(tmp_path) -> None:
    corpus = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "x"}\r{"_id": "d2", "text": "y"}\r')
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "idx")
    assert_user_error(result, "corpus.jsonl, line 1", "lone carriage return")


@pytest.mark.parametrize("name, header", [("corpus.tsv", "ID\tText"), ("corpus.csv", "doc_id,Title,Text")])
def test_corpus_header_in_capitals_is_a_header_not_a_document(tmp_path, name, header) -> None:
    separator = "\t" if name.endswith(".tsv") else ","
    row = separator.join(["d1", "T", "cats purr"] if header.count(separator) == 2 else ["d1", "cats purr"])
    corpus = write(tmp_path / name, f"{header}\n{row}\n")
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "idx")
    assert result.returncode == 0, result.stderr
    assert "1 documents" in result.stdout  # the header row used to be indexed as a document


def test_eval_refuses_a_cut_off_beyond_trec_eval_range(tmp_path) -> None:
    run, qrels = write(tmp_path / "run.trec", RUN), write(tmp_path / "qrels.tsv", QRELS)
    assert_user_error(embedkit("eval", "--run", run, "--qrels", qrels, "--k", "9223372036854775808"),
                      "cut-offs k must be whole numbers")  # was a KeyError traceback from pytrec_eval's results
    result = embedkit("eval", "--run", run, "--qrels", qrels, "--k", "10", "10")
    assert result.returncode == 0 and result.stdout.count("nDCG@10") == 1, result.stdout


@pytest.mark.parametrize("text", ['[\n  {"_id": "d1", "text": "x"},\n  {"_id": "d2", "text": "y"}\n]\n',
                                  '[{"_id": "d1", "text": "x"}, {"_id": "d2", "text": "y"}]\n'])
def test_a_json_array_file_is_told_apart_from_json_lines(tmp_path, text) -> None:
    corpus = write(tmp_path / "corpus.json", text)
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "idx")
    assert_user_error(result, "corpus.json, line 1", "JSON array, not JSON Lines", "corpus-lines.jsonl")


def test_a_parquet_corpus_with_a_repeated_column_is_refused(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["d1"]), pa.array(["first text"]), pa.array(["second text"])],
                                 names=["id", "text", "text"])
    pq.write_table(table, tmp_path / "corpus.parquet")
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", tmp_path / "corpus.parquet",
                      "--out", tmp_path / "idx")
    assert_user_error(result, "corpus.parquet", "column 'text' appears twice")  # one of them was dropped silently
    assert not (tmp_path / "idx").exists()
