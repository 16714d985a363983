"""Issue #11, reader side: every bad input is a clear error naming file and line (exit 2), never a traceback,
and tsv/csv are read with quoting and column checks instead of being silently cut."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit.data import iter_documents, load_qrels, load_queries, read_run, write_trec_run
from embedkit.errors import DataFormatError


def embedkit(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def assert_clear_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


# --- item 4: tsv/csv with a real parser, BOMs, column counts ---------------------------------------------

def test_tsv_row_with_more_columns_than_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.tsv"
    path.write_text("id\ttext\n1\tfirst part\tsecond part\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.tsv, line 2: expected 2 columns like the header \(line 1\), got 3"):
        list(iter_documents(path))


def test_tsv_quoted_field_keeps_tabs_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "c.tsv"
    path.write_text('id\ttext\n1\t"tab\there ""quoted"""\n2\t"Hi," she said\n', encoding="utf-8")
    assert [(d.id, d.text) for d in iter_documents(path)] == [("1", 'tab\there "quoted"'), ("2", '"Hi," she said')]
    unclosed = tmp_path / "u.tsv"
    unclosed.write_text('id\ttext\n1\t"starts here\n2\tand ends here"\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"u\.tsv, line 2: a quoted field"):
        list(iter_documents(unclosed))


def test_bom_is_accepted_in_every_format(tmp_path: Path) -> None:
    bom = "\ufeff"
    tsv = tmp_path / "c.tsv"
    tsv.write_text(bom + "id\ttitle\ttext\n1\tT\tbody\n", encoding="utf-8")
    assert [(d.id, d.title, d.text) for d in iter_documents(tsv)] == [("1", "T", "body")]
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(bom + 'id,text\r\n1,"a, b"\r\n', encoding="utf-8")
    assert [(d.id, d.text) for d in iter_documents(csv_path)] == [("1", "a, b")]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(bom + '{"_id": "1", "text": "x"}\n', encoding="utf-8")
    assert [d.id for d in iter_documents(jsonl)] == ["1"]
    queries = tmp_path / "q.jsonl"
    queries.write_text(bom + '{"_id": "q1", "text": "x"}\n', encoding="utf-8")
    assert load_queries(queries) == {"q1": "x"}
    queries_tsv = tmp_path / "q.tsv"
    queries_tsv.write_text(bom + "q1\tx\r\n", encoding="utf-8")
    assert load_queries(queries_tsv) == {"q1": "x"}
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(bom + "query-id\tcorpus-id\tscore\nq1\t1\t1\n", encoding="utf-8")
    assert load_qrels(qrels) == {"q1": {"1": 1}}
    run = tmp_path / "run.trec"
    run.write_text(bom + "q1 Q0 1 1 0.5 t\n", encoding="utf-8")
    assert read_run(run) == {"q1": {"1": 0.5}}


def test_csv_multiline_field_and_bad_csv(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"two\nlines"\n2,plain\n', encoding="utf-8")
    assert [(d.id, d.text) for d in iter_documents(path)] == [("1", "two\nlines"), ("2", "plain")]
    bad = tmp_path / "bad.csv"
    bad.write_text('id,text\n1,ok\n2,"x"y\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: malformed CSV"):
        list(iter_documents(bad))
    short = tmp_path / "short.csv"
    short.write_text("id,title,text\n1,T,x\n2,y\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"short\.csv, line 3: expected 3 columns"):
        list(iter_documents(short))


def test_queries_tsv_with_extra_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    path.write_text("q1\twhat is\tfaiss\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"queries\.tsv, line 1: expected 2 tab-separated columns"):
        load_queries(path)


def test_qrels_tab_separated_ids_may_hold_spaces(tmp_path: Path) -> None:
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq 1\tdoc a\t1\n", encoding="utf-8")
    assert load_qrels(path) == {"q 1": {"doc a": 1}}


@pytest.mark.slow
def test_cli_tsv_extra_column_exits_2(tmp_path: Path) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_text("id\ttext\n1\tfirst\tsecond\n", encoding="utf-8")
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", tmp_path / "idx")
    assert_clear_error(result, "c.tsv, line 2")
    assert not (tmp_path / "idx").exists()


# --- item 5: every TREC run embedkit writes is valid -------------------------------------------------------

@pytest.mark.parametrize("bad", ["doc 1", "doc\t1", "doc\n1", "doc\u00a01", ""])
def test_trec_writer_refuses_ids_with_whitespace(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DataFormatError, match="cannot be written to a TREC run"):
        write_trec_run({"q1": {bad: 1.0}}, tmp_path / "run.trec")
    with pytest.raises(DataFormatError, match="cannot be written to a TREC run"):
        write_trec_run({bad: {"d1": 1.0}}, tmp_path / "run.trec")
    assert not (tmp_path / "run.trec").exists()


def test_trec_writer_refuses_tag_with_space(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="run tag 'my run'"):
        write_trec_run({"q1": {"d1": 1.0}}, tmp_path / "run.trec", tag="my run")


def test_trec_round_trip_of_unicode_ids(tmp_path: Path) -> None:
    run = {"q-é": {"文档1": 0.5, "d\u200b2": 0.25}}  # a zero-width space is not whitespace
    write_trec_run(run, tmp_path / "run.trec")
    assert read_run(tmp_path / "run.trec") == run


@pytest.mark.slow
def test_cli_eval_bad_run_and_qrels_name_file_and_line(tmp_path: Path) -> None:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\n", encoding="utf-8")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 0.5 my run\n", encoding="utf-8")
    assert_clear_error(embedkit("eval", "--run", run, "--qrels", qrels), "run.trec, line 1", "expected 6")
    run.write_text("q1 Q0 d1 1 high tag\n", encoding="utf-8")
    assert_clear_error(embedkit("eval", "--run", run, "--qrels", qrels), "run.trec, line 1", "not a number")
    run.write_bytes(b"q1 Q0 d1 1 0.5 t\nq1 Q0 d\xff 2 0.4 t\n")
    assert_clear_error(embedkit("eval", "--run", run, "--qrels", qrels), "run.trec, line 2", "not valid UTF-8")
    run.write_text("q1 Q0 d1 1 0.5 t\n", encoding="utf-8")
    qrels.write_bytes(b"q1\td1\t1\nq2\td\xe9\t1\n")
    assert_clear_error(embedkit("eval", "--run", run, "--qrels", qrels), "qrels.tsv, line 2", "byte offset 12")
    qrels.write_text("q1\td1\tvery\n", encoding="utf-8")
    assert_clear_error(embedkit("eval", "--run", run, "--qrels", qrels), "qrels.tsv, line 1", "not an integer")


# --- item 8: not UTF-8, lone surrogates, deep nesting, fake parquet ----------------------------------------

def test_corpus_not_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 2: not valid UTF-8: byte b'\\xe9' at byte offset 52"):
        list(iter_documents(path))
    latin = tmp_path / "c.tsv"
    latin.write_bytes(b"1\tcaf\xe9\n")
    with pytest.raises(DataFormatError, match=r"c\.tsv, line 1: not valid UTF-8"):
        list(iter_documents(latin))


@pytest.mark.parametrize("line, field", [
    ('{"_id": "1", "text": "bad \\ud800 half"}', "text"),
    ('{"_id": "x\\udc00", "text": "ok"}', "_id"),
    ('{"_id": "1", "text": "ok", "meta": {"tags": ["\\udfff"]}}', "meta.tags[0]"),
])
def test_lone_surrogate_is_refused_naming_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "0", "text": "pair \\ud83d\\ude00 is fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 2: lone surrogate") as error:
        list(iter_documents(path))
    assert f"(field '{field}')" in str(error.value)


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": ' + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 2: JSON nested too deeply"):
        list(iter_documents(path))
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "q", "text": ' + '[{"a": ' * 50_000 + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"q\.jsonl, line 1: JSON nested too deeply"):
        load_queries(queries)


def test_huge_json_integer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "1", "text": "x", "n": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 1: unreadable JSON"):
        list(iter_documents(path))


def test_file_named_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_text('{"_id": "1", "text": "I am jsonl"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.parquet: cannot read as Parquet"):
        list(iter_documents(path))


def test_damaged_gzip_corpus(tmp_path: Path) -> None:
    import gzip

    data = gzip.compress(b"".join(b'{"_id": "%d", "text": "x"}\n' % i for i in range(5000)))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"c\.jsonl\.gz: damaged gzip stream"):
        list(iter_documents(path))


@pytest.mark.slow
def test_cli_bad_corpora_exit_2(tmp_path: Path) -> None:
    cases = {
        "latin1.jsonl": b'{"_id": "1", "text": "caf\xe9"}\n',
        "surrogate.jsonl": b'{"_id": "1", "text": "\\ud800"}\n',
        "nested.jsonl": b'{"_id": "1", "text": ' + b"[" * 100_000 + b"\n",
        "fake.parquet": b"not parquet at all",
        "bool_id.jsonl": b'{"_id": true, "text": "x"}\n',
    }
    for name, data in cases.items():
        corpus = tmp_path / name
        corpus.write_bytes(data)
        result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                          "--out", tmp_path / f"idx-{name}")
        assert_clear_error(result, name)


@pytest.mark.slow
def test_cli_search_with_bad_queries_exits_2(tmp_path: Path, small_corpus: Path) -> None:
    index = tmp_path / "idx"
    built = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", small_corpus,
                     "--out", index)
    assert built.returncode == 0, built.stderr
    cases = {
        "latin1.jsonl": b'{"_id": "q1", "text": "caf\xe9"}\n',
        "surrogate.jsonl": b'{"_id": "q1", "text": "x \\udfff"}\n',
        "nested.jsonl": b'{"_id": "q1", "text": ' + b'{"a": ' * 100_000 + b"\n",
        "number_id.jsonl": b'{"_id": 7, "text": "cats"}\n',
        "extra.tsv": b"q1\tcats\tdogs\n",
    }
    for name, data in cases.items():
        queries = tmp_path / name
        queries.write_bytes(data)
        assert_clear_error(embedkit("search", index, "--queries", queries), f"{name}, line 1")


# --- item 11: strict types in the readers ---------------------------------------------------------------

@pytest.mark.parametrize("record, field, shown", [
    ({"_id": 7, "text": "x"}, "_id", "number 7"),
    ({"_id": 1.5, "text": "x"}, "_id", "number 1.5"),
    ({"_id": True, "text": "x"}, "_id", "boolean true"),
    ({"_id": ["a"], "text": "x"}, "_id", "list"),
    ({"_id": "1", "text": {"a": 1}}, "text", 'object {"a": 1}'),
    ({"_id": "1", "text": 3}, "text", "number 3"),
    ({"_id": "1", "text": "x", "title": ["t"]}, "title", "list"),
])
def test_corpus_fields_of_the_wrong_type_are_refused(tmp_path: Path, record: dict, field: str, shown: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"_id": "0", "text": "fine"}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 2: ") as error:
        list(iter_documents(path))
    assert f"(field '{field}')" in str(error.value) and shown in str(error.value)


def test_parquet_integer_id_column_is_exact(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [10, 20], "text": ["a", None]}), tmp_path / "c.parquet")
    assert [(d.id, d.text) for d in iter_documents(tmp_path / "c.parquet")] == [("10", "a"), ("20", "")]
    pq.write_table(pa.table({"id": [1.5], "text": ["a"]}), tmp_path / "f.parquet")
    with pytest.raises(DataFormatError, match=r"f\.parquet, line 1: document id must be a string"):
        list(iter_documents(tmp_path / "f.parquet"))


@pytest.mark.parametrize("record, field", [({"_id": 7, "text": "x"}, "_id"), ({"_id": "q", "text": ["x"]}, "text")])
def test_query_fields_of_the_wrong_type_are_refused(tmp_path: Path, record: dict, field: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"q\.jsonl, line 1: .*must be a string.*\(field '{field}'\)"):
        load_queries(path)


def test_title_field_appearing_after_the_first_record_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "1", "text": "a"}\n{"_id": "2", "title": "T", "text": "b"}\n', encoding="utf-8")
    assert [(d.id, d.title) for d in iter_documents(path)] == [("1", ""), ("2", "T")]


def test_jsonl_run_writer_refuses_lone_surrogates(tmp_path: Path) -> None:
    from embedkit.data import write_jsonl_run

    with pytest.raises(DataFormatError, match=r"cannot write query 'q1': lone surrogate U\+DCFF.*\(field 'query'\)"):
        write_jsonl_run({"q1": {"query": "cats \udcff", "hits": []}}, tmp_path / "run.jsonl")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_search_query_that_is_not_utf8_exits_2(tmp_path: Path, small_corpus: Path) -> None:
    index = tmp_path / "idx"
    built = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", small_corpus, "--out", index)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([sys.executable, "-m", "embedkit", "search", str(index), b"cats \xff", "-o",
                             str(tmp_path / "run.jsonl")], capture_output=True, text=True, timeout=600)
    assert_clear_error(result, "surrogate")
    assert not (tmp_path / "run.jsonl").exists()
