"""Corpus, queries, qrels and run readers: the formats users have, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.data import FieldMap, iter_documents, load_qrels, load_queries, read_run, write_trec_run
from embedkit.errors import DataFormatError
from tests.helpers import write_jsonl


def test_beir_and_pyserini_jsonl(tmp_path: Path) -> None:
    beir = write_jsonl(tmp_path / "beir.jsonl", [{"_id": "a", "title": "T", "text": "x"}, {"_id": "b", "text": "y"}])
    docs = list(iter_documents(beir))
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "x"), ("b", "", "y")]
    assert docs[0].joined() == "T x" and docs[0].contents() == "T\nx"
    pyserini = write_jsonl(tmp_path / "pyserini.jsonl", [{"id": "p1", "contents": "hello world"}])
    assert [(d.id, d.text) for d in iter_documents(pyserini)] == [("p1", "hello world")]


def test_custom_fields_tsv_parquet_and_datasets_folder(tmp_path: Path) -> None:
    custom = write_jsonl(tmp_path / "c.jsonl", [{"pid": "7", "passage": "body", "heading": "H"}])
    doc = next(iter_documents(custom, FieldMap(id_field="pid", text_field="passage", title_field="heading")))
    assert (doc.id, doc.text, doc.title) == ("7", "body", "H")

    headerless = tmp_path / "c.tsv"
    headerless.write_text("1\tfirst text\n2\tsecond text\n")
    assert [d.id for d in iter_documents(headerless)] == ["1", "2"]
    with_header = tmp_path / "h.tsv"
    with_header.write_text("id\ttitle\ttext\n1\tA\tfirst\n")
    assert [(d.id, d.title, d.text) for d in iter_documents(with_header)] == [("1", "A", "first")]

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"_id": ["x", "y"], "text": ["one", "two"]}), tmp_path / "c.parquet")
    assert [d.text for d in iter_documents(tmp_path / "c.parquet")] == ["one", "two"]
    datasets.Dataset.from_dict({"id": ["z"], "contents": ["three"]}).save_to_disk(str(tmp_path / "saved"))
    assert [d.id for d in iter_documents(tmp_path / "saved")] == ["z"]


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: malformed JSON"):
        list(iter_documents(path))


def test_missing_field_lists_fields_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "1", "abstract": "x", "lang": "en"}])
    with pytest.raises(DataFormatError) as error:
        list(iter_documents(path))
    assert "line 1" in str(error.value) and "fields found: _id, abstract, lang" in str(error.value)
    later = write_jsonl(tmp_path / "d.jsonl", [{"_id": "1", "text": "x"}, {"_id": "2", "txt": "y"}])
    with pytest.raises(DataFormatError, match=r"line 2: missing field 'text'.*fields found: _id, txt"):
        list(iter_documents(later))


def test_duplicate_ids_and_empty_corpus(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "1", "text": "a"}, {"_id": "2", "text": "b"}, {"_id": "1", "text": "c"}])
    with pytest.raises(DataFormatError, match=r"line 3: duplicate document id '1' \(first seen on line 1\)"):
        list(iter_documents(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="no documents"):
        list(iter_documents(empty))


def test_queries_jsonl_and_tsv(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "alpha"}, {"_id": "q2", "text": "beta"}])
    assert load_queries(jsonl) == {"q1": "alpha", "q2": "beta"}
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("q1\talpha\nq2\tbeta\n")
    assert load_queries(tsv) == {"q1": "alpha", "q2": "beta"}


def test_qrels_beir_and_trec(tmp_path: Path) -> None:
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    trec = tmp_path / "qrels.trec"
    trec.write_text("q1 0 d1 1\nq1 0 d2 2\n")
    assert load_qrels(beir) == load_qrels(trec) == {"q1": {"d1": 1, "d2": 2}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1\td1\tyes\n")
    with pytest.raises(DataFormatError, match="line 1"):
        load_qrels(bad)


def test_trec_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d3": 1.0}}
    write_trec_run(run, tmp_path / "run.trec", tag="t")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.900000 t" and lines[1] == "q1 Q0 d1 2 0.500000 t"
    assert read_run(tmp_path / "run.trec") == run
    assert not list(tmp_path.glob("*.tmp-*"))


def test_jsonl_run_is_valid_json(tmp_path: Path) -> None:
    from embedkit.data import write_jsonl_run

    write_jsonl_run({"q1": {"query": "x", "hits": [{"id": "d1", "score": 1.0}]}}, tmp_path / "run.jsonl")
    assert json.loads((tmp_path / "run.jsonl").read_text())["hits"][0]["id"] == "d1"


def test_pydantic_records_round_trip_and_bad_lines(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from embedkit.data.records import read_records, write_records

    class Step(BaseModel):
        query: str
        k: int

    path = write_records(tmp_path / "steps.jsonl", [Step(query="a", k=1), Step(query="b", k=2)])
    assert read_records(path, Step, what="step") == [Step(query="a", k=1), Step(query="b", k=2)]
    path.write_text('{"query": "a", "k": 1}\n{"query": "b", "k": "many"}\n')
    with pytest.raises(DataFormatError, match=r"steps\.jsonl, line 2: not a step: .*\(field 'k'\)"):
        read_records(path, Step, what="step")
    path.write_text("")
    with pytest.raises(DataFormatError, match="no step in file"):
        read_records(path, Step, what="step", allow_empty=False)
