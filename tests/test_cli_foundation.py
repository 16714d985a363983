"""The CLI end to end (index build → search → eval → beir), and exit code 2 with a clear message on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedkit.cli import main
from tests.helpers import write_jsonl


@pytest.fixture(scope="module")
def beir_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("beir")
    write_jsonl(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice."},
        {"_id": "d2", "title": "Dogs", "text": "Dogs are loyal companions that bark and love to play fetch."},
        {"_id": "d3", "title": "FAISS", "text": "FAISS is a library for fast similarity search over dense vectors."},
        {"_id": "d4", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
    ])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "kitten"}, {"_id": "q2", "text": "eruption of lava"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\n")
    return folder


@pytest.fixture(scope="module")
def cli_index(beir_dataset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "idx"
    assert main(["index", "build", "--corpus", str(beir_dataset / "corpus.jsonl"), "--out", str(out), "-q"]) == 0
    return out


def test_build_search_eval(cli_index: Path, beir_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["search", str(cli_index), "cats that purr", "--k", "2"]) == 0
    table = capsys.readouterr().out
    assert "query: cats that purr" in table and table.index("d1") < table.index("d2")
    run = tmp_path / "run.trec"
    assert main(["search", str(cli_index), "--queries", str(beir_dataset / "queries.jsonl"), "--output", str(run), "-q"]) == 0
    assert run.read_text().splitlines()[0].split()[:4] == ["q1", "Q0", "d1", "1"]
    jsonl = tmp_path / "run.jsonl"
    assert main(["search", str(cli_index), "--queries", str(beir_dataset / "queries.jsonl"), "-o", str(jsonl), "-q"]) == 0
    assert '"title": "Cats"' in jsonl.read_text()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--qrels", str(beir_dataset / "qrels" / "test.tsv")]) == 0
    assert "nDCG@10      1.0000" in capsys.readouterr().out


def test_beir_command_writes_metrics(beir_dataset: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "out"
    assert main(["beir", str(beir_dataset), "--index", str(tmp_path / "idx"), "--output-dir", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["nDCG@10"] == 1.0 and metrics["model"]["pooling"] == "mean"


def _fails(argv: list[str], capsys, expected: str) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("embedkit: error:") and expected in error, error


def test_bad_input_exits_2_with_clear_message(cli_index: Path, beir_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "new"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"_id": "1", "text": "ok"}\n{oops}\n')
    _fails(["index", "build", "--corpus", str(bad_json), "--out", str(out), "-q"], capsys, "bad.jsonl, line 2: malformed JSON")
    no_text = write_jsonl(tmp_path / "nt.jsonl", [{"_id": "1", "abstract": "x"}])
    _fails(["index", "build", "--corpus", str(no_text), "--out", str(out), "-q"], capsys, "fields found: _id, abstract")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"_id": "1", "text": "x"}, {"_id": "1", "text": "y"}])
    _fails(["index", "build", "--corpus", str(dup), "--out", str(out), "-q"], capsys, "duplicate document id '1'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(["index", "build", "--corpus", str(empty), "--out", str(out), "-q"], capsys, "no documents")
    assert not out.exists() and not list(tmp_path.glob("new*"))

    run = tmp_path / "run.trec"
    run.write_text("x1 Q0 d1 1 1.0 t\n")
    _fails(["eval", "--run", str(run), "--qrels", str(beir_dataset / "qrels" / "test.tsv")], capsys, "no query id of the qrels")
    _fails(["search", str(tmp_path), "query"], capsys, "is not an embedkit index")
    _fails(["search", str(cli_index), "query", "--query-prefix", "query: "], capsys, "differs from the prefix")


@pytest.mark.slow
def test_python_dash_m_exit_code(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "embedkit", "search", str(tmp_path), "q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not an embedkit index" in result.stderr
    assert subprocess.run([sys.executable, "-m", "embedkit", "--help"], capture_output=True, timeout=120).returncode == 0


def test_search_backends_agree(cli_index: Path, beir_dataset: Path, tmp_path: Path) -> None:
    queries = str(beir_dataset / "queries.jsonl")
    runs = {}
    for name, extra in {"faiss": [], "torch": ["--backend", "torch"], "mmap": ["--mmap"]}.items():
        out = tmp_path / f"{name}.trec"
        assert main(["search", str(cli_index), "--queries", queries, "--k", "4", "-o", str(out), "-q", *extra]) == 0
        runs[name] = [line.split()[:4] for line in out.read_text().splitlines()]
    assert runs["faiss"] == runs["torch"] == runs["mmap"]
