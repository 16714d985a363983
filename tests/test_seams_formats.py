"""Issue 23: what embedkit writes for other projects opens in those projects' own readers, as their users read it.

- FAISS: every FAISS file of an index folder (Flat, HNSW, IVF, IVF-PQ and an imported plain FAISS file; as
  built, after `embedkit index add` with an upsert, after `index remove`, after `index compact`) opens with plain
  `faiss.read_index`: `index.faiss`, or after updates each segment's file listed in `manifest.json`
  (`segments[].faiss`, `embedkit.index.segments`). Its labels are the `row`s of its document store (table
  `docs(row, id, …)`), so a plain FAISS user finds each document by its own vector. `ntotal` counts its stored
  rows plus the masked rows its deletion file lists (a `.npy` of rows; deleted documents stay in the files,
  masked by embedkit, until merged or `index compact` rebuilds them).
- pyserini: a BM25 index built with the pyserini backend opens with pyserini's own `LuceneSearcher` on its
  `lucene/` folder and ranks as `embedkit search` does (needs Java 21+; skipped otherwise).
- datasets: every jsonl embedkit writes for others loads with `datasets.load_dataset("json", data_files=…)`,
  one file or several together, with the expected columns and rows: `embedkit search -o run.jsonl`, agent
  trajectories (`embedkit agent run`, also with failed retrievals), Agentic-R training pairs (`embedkit
  agentic-r label`), reward pairs (`embedkit rewards build-pairs`, with its train/held-out split), judge and
  policy training prompts (`embedkit rewards build-prompts`), and FlagEmbedding training data
  (`embedkit.training.write_jsonl`). embedkit reads Search-R1's and verl's parquet but writes no parquet.

Everything is written by the real CLI (run in this process: `embedkit.cli.main`) over a tiny random BERT.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from tests.helpers import MULTIHOP_DOCS, free_port, write_jsonl

pytestmark = pytest.mark.slow

WORDS = "protein cell gene cancer virus study patients treatment river city film music band album song".split()


def cli(*args: str | Path) -> None:
    status = main([str(arg) for arg in args])
    assert status == 0, args


def filler_docs(count: int, prefix: str = "f") -> list[dict]:
    """Distinct documents: each a different rotation and length of the word list."""
    return [{"_id": f"{prefix}{i}", "title": WORDS[i % len(WORDS)],
             "text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 + i % 7))} for i in range(count)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from embedkit.training.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("model") / "tiny", seed=7, hidden_size=32, layers=1)


@pytest.fixture(scope="module")
def encode(tiny_model):
    """The folder's model as a plain sentence-transformers user loads it: text -> float32 vectors."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    return lambda texts: np.asarray(model.encode(list(texts)), dtype=np.float32)


def joined(record: dict) -> str:
    return f"{record['title']} {record['text']}".strip() if record.get("title") else record["text"]


# --- FAISS: index.faiss of every kind, through its whole life ---------------------------------------------


def docstore_rows(store: Path) -> dict[int, str]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT row, id FROM docs"))


def faiss_files(folder: Path) -> list[tuple[Path, Path, Path | None]]:
    """(FAISS file, document store, deletion file) of each segment, as the manifest lists them."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("segments"):
        return [(folder / s["faiss"], folder / s["docstore"], folder / s["deleted"] if s["deleted"] else None)
                for s in manifest["segments"]]
    deleted = folder / "deleted.npy"
    return [(folder / "index.faiss", folder / "docstore.sqlite", deleted if deleted.exists() else None)]


def check_plain_faiss(folder: Path, encode, texts: dict[str, str], *, exact: bool) -> None:
    """`faiss.read_index` opens every FAISS file; ntotal = stored + masked rows; each live document is found by
    its vector (its best hit over the files, deleted rows skipped)."""
    import faiss

    manifest = json.loads((folder / "manifest.json").read_text())
    opened, live_ids, deleted_all = [], {}, set()
    for faiss_path, store, deleted_path in faiss_files(folder):
        index = faiss.read_index(str(faiss_path))
        rows = docstore_rows(store)
        deleted = set(np.load(deleted_path).tolist()) if deleted_path is not None else set()
        assert index.ntotal == len(rows.keys() | deleted), (faiss_path.name, index.ntotal, len(rows), sorted(deleted))
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = ivf.nlist  # a plain user's exhaustive probe
        live_ids.update({row: doc_id for row, doc_id in rows.items() if row not in deleted})
        deleted_all |= deleted
        opened.append((index, rows, deleted))
    assert manifest["num_docs"] == len(live_ids)
    assert len(set(live_ids.values())) == len(live_ids), "an id live twice"
    live = {doc_id: text for doc_id, text in texts.items() if doc_id in live_ids.values()}
    vectors = encode(live.values())
    best: list[list[tuple[float, str]]] = [[] for _ in live]
    for index, rows, deleted in opened:
        scores, labels = index.search(vectors, 5)
        for position, (found_scores, found) in enumerate(zip(scores, labels, strict=True)):
            assert set(found.tolist()) - {-1} <= rows.keys() | deleted, "a label that is no row of the store"
            best[position] += [(float(score), live_ids[label]) for score, label in zip(found_scores, found, strict=True)
                               if label in live_ids]
    if exact:
        for doc_id, hits in zip(live, best, strict=True):
            top = max(score for score, _ in hits)
            assert (top, doc_id) in hits, (folder.name, doc_id, sorted(hits, reverse=True)[:3])


@pytest.fixture(scope="module")
def lifecycle_corpora(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lifecycle")
    base = filler_docs(40)
    new = [{"_id": f"new{i}", "title": "added", "text": f"an added document number {'one two three'.split()[i]}"}
           for i in range(3)] + [{"_id": "f5", "title": "virus", "text": "an upserted virus album song"}]
    ids = folder / "remove.txt"
    ids.write_text("f7\nnew1\n")
    return {"corpus": write_jsonl(folder / "corpus.jsonl", base), "new": write_jsonl(folder / "new.jsonl", new),
            "ids": ids}


def texts_of(*paths: Path) -> dict[str, str]:
    """id -> the text the encoder reads, the last file's version of an id winning (an upsert)."""
    out: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[record["_id"]] = joined(record)
    return out


@pytest.mark.parametrize("factory, exact", [("Flat", True), ("HNSW32", True), ("IVF4,Flat", True),
                                            ("IVF4,PQ8x4", False), ("imported", True)])
def test_every_index_faiss_opens_with_plain_faiss(factory, exact, tiny_model, encode, lifecycle_corpora, tmp_path):
    import faiss

    corpus, new = lifecycle_corpora["corpus"], lifecycle_corpora["new"]
    folder = tmp_path / "index"
    if factory == "imported":
        # Search-R1's layout: a FAISS file made elsewhere, row i = corpus record i.
        flat = faiss.IndexFlatIP(32)
        flat.add(encode(texts_of(corpus).values()))
        faiss.write_index(flat, str(tmp_path / "e5_Flat.index"))
        cli("index", "import", "--faiss", tmp_path / "e5_Flat.index", "--corpus", corpus, "--model", tiny_model,
            "--pooling", "mean", "--device", "cpu", "--copy", "--out", folder, "--quiet")
    else:
        cli("index", "build", "--corpus", corpus, "--model", tiny_model, "--device", "cpu", "--index-factory",
            factory, "--out", folder, "--quiet")
    check_plain_faiss(folder, encode, texts_of(corpus), exact=exact)

    cli("index", "add", folder, "--corpus", new, "--quiet")  # three new documents and one replaced (f5)
    texts = texts_of(corpus, new)
    check_plain_faiss(folder, encode, texts, exact=exact)
    # the replaced f5 stays in its FAISS file, masked by a deletion file
    assert any(deleted is not None for _, _, deleted in faiss_files(folder))

    cli("index", "remove", folder, "--ids", lifecycle_corpora["ids"])
    check_plain_faiss(folder, encode, texts, exact=exact)

    cli("index", "compact", folder)
    assert not (folder / "deleted.npy").exists() and faiss_files(folder)[0][0].name == "index.faiss"
    check_plain_faiss(folder, encode, texts, exact=exact)
    assert faiss.read_index(str(folder / "index.faiss")).ntotal == 40 + 3 - 2


# --- pyserini: LuceneSearcher on a pyserini-backend BM25 folder ------------------------------------------


def needs_java():
    from embedkit.lexical.java import java_available

    if not java_available():
        pytest.skip("pyserini needs a Java 21+ runtime, and none was found")


@pytest.mark.parametrize("fields", [None, "contents=1.0 title=1.0"])
def test_pyserini_bm25_opens_with_lucene_searcher_and_ranks_alike(fields, tmp_path, monkeypatch):
    needs_java()
    # pyserini.search.lucene imports pyserini.encode, which builds an OpenAI client at import time and fails
    # without a key (upstream; BM25 never calls OpenAI): a plain pyserini user sets a placeholder, as we do.
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY") or "unused")
    records = filler_docs(30) + [{"_id": i, "title": t, "text": x} for i, t, x in MULTIHOP_DOCS]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    folder = tmp_path / "bm25"
    cli("index", "build", "--kind", "bm25", "--backend", "pyserini", "--corpus", corpus, "--out", folder, "--quiet",
        *(["--fields", *fields.split()] if fields else []))
    queries = {"q1": "Shirley Temple film", "q2": "cancer gene study", "q3": "radio sitcom on CBS", "q4": "bread"}
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": qid, "text": text} for qid, text in queries.items()])
    cli("search", folder, "--queries", tmp_path / "queries.jsonl", "-k", "5", "-o", tmp_path / "run.jsonl")
    ours = {record["query_id"]: [(hit["id"], hit["score"]) for hit in record["hits"]]
            for record in map(json.loads, (tmp_path / "run.jsonl").read_text().splitlines())}

    from embedkit.lexical.java import ensure_jvm

    ensure_jvm()
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(folder / "lucene"))  # pyserini's defaults are BM25 k1=0.9, b=0.4 too
    weights = {name: float(w) for name, w in (item.split("=") for item in fields.split())} if fields else {}
    for qid, text in queries.items():
        hits = searcher.search(text, k=5, fields=weights)
        theirs = [(hit.docid, hit.score) for hit in hits]
        assert [doc_id for doc_id, _ in theirs] == [doc_id for doc_id, _ in ours[qid]], (qid, theirs, ours[qid])
        assert [score for _, score in theirs] == pytest.approx([score for _, score in ours[qid]], rel=1e-5)
    assert searcher.num_docs == len(records)


# --- datasets: every jsonl written for others --------------------------------------------------------------


def load_json(*paths: Path, features=None):
    import datasets

    return datasets.load_dataset("json", data_files=[str(path) for path in paths], split="train",
                                 features=features, cache_dir=str(paths[0].parent / "hf-datasets-cache"))


@pytest.fixture(scope="module")
def agent_setup(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """A dense index (the multi-hop documents among fillers), questions, and trajectories of two agent runs."""
    folder = tmp_path_factory.mktemp("agent")
    records = [{"_id": i, "title": t, "text": x} for i, t, x in MULTIHOP_DOCS] + filler_docs(30)
    corpus = write_jsonl(folder / "corpus.jsonl", records)
    cli("index", "build", "--corpus", corpus, "--model", tiny_model, "--device", "cpu", "--out", folder / "index",
        "--quiet")
    questions = write_jsonl(folder / "questions.jsonl", [
        {"id": "q1", "question": "Who starred in Kiss and Tell?", "golden_answers": ["Shirley Temple"]},
        {"id": "q2", "question": "What is bread baked from?", "golden_answers": ["flour"]},
        {"id": "q3", "question": "What erupts from a volcano?", "golden_answers": ["molten rock"]},
    ])
    cli("agent", "run", "--questions", questions, "--index", folder / "index", "--llm", "heuristic",
        "--out", folder / "trajectories.jsonl")
    # The same questions against a retrieval server that is not there: every search turn records its error.
    cli("agent", "run", "--questions", questions, "--retriever-url", f"http://127.0.0.1:{free_port()}",
        "--retrieval-timeout", "2", "--llm", "heuristic", "--out", folder / "failed.jsonl")
    return {"folder": folder, "index": folder / "index", "questions": questions,
            "trajectories": folder / "trajectories.jsonl", "failed": folder / "failed.jsonl"}


def test_search_run_jsonl_loads_with_datasets(agent_setup):
    out = agent_setup["folder"] / "run.jsonl"
    cli("search", agent_setup["index"], "--queries", agent_setup["questions"], "-k", "3", "-o", out)
    data = load_json(out)
    assert data.column_names == ["query_id", "query", "hits"]
    assert data["query_id"] == ["q1", "q2", "q3"]
    assert all(len(hits) == 3 and set(hits[0]) == {"id", "score", "rank", "title", "text"} for hits in data["hits"])


def test_trajectories_load_with_datasets_alone_and_together(agent_setup):
    good = load_json(agent_setup["trajectories"])
    assert good.num_rows == 3
    assert {"id", "question", "answers", "turns", "prediction", "status", "em", "f1"} <= set(good.column_names)
    assert good["id"] == ["q1", "q2", "q3"] and good["answers"][0] == ["Shirley Temple"]
    assert good["turns"][0][0]["passages"], "the first turn searched and kept its passages"
    failed = load_json(agent_setup["failed"])
    assert any(turn["error"] for turns in failed["turns"] for turn in turns), "no failed retrieval recorded"
    # Together, `error` is null all through the first file: datasets needs the types (huggingface/datasets#7092).
    from agents.search_agent.trajectory import Trajectory
    from embedkit.data.records import dataset_features

    both = load_json(agent_setup["trajectories"], agent_setup["failed"], features=dataset_features(Trajectory))
    assert both.num_rows == 6 and both["id"] == ["q1", "q2", "q3"] * 2
    assert both[:3]["turns"] == good["turns"] and both[3:]["turns"] == failed["turns"]


def test_agentic_r_training_pairs_load_with_datasets(agent_setup):
    out = agent_setup["folder"] / "pairs.jsonl"
    cli("agentic-r", "label", "--trajectories", agent_setup["trajectories"], "--index", agent_setup["index"],
        "--local", "embedder", "--global", "containment", "--min-local", "0", "--out", out)
    data = load_json(out)
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    assert data.num_rows == len(expected) > 0
    assert {"qid", "turn", "query", "positives", "negatives"} <= set(data.column_names)
    assert data["query"] == [record["query"] for record in expected]
    assert [len(n) for n in data["negatives"]] == [len(record["negatives"]) for record in expected]
    from agents.agentic_r.pairs import TrainingPair
    from embedkit.data.records import dataset_features

    assert load_json(out, features=dataset_features(TrainingPair))[:] == data[:]


def test_reward_pairs_and_prompts_load_with_datasets(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    cli("rewards", "build-pairs", "--sources", "countdown,math", "--per-source", "4", "--held-out", "0.5",
        "--out", pairs)
    train, held_out = tmp_path / "pairs.train.jsonl", tmp_path / "pairs.heldout.jsonl"
    for path in (pairs, train, held_out):
        data = load_json(path)
        assert data.column_names == ["id", "prompt", "chosen", "rejected", "subset"]
        assert data.num_rows == len(path.read_text().splitlines())
    assert load_json(pairs).num_rows == 8 == load_json(train, held_out).num_rows
    assert set(load_json(pairs)["subset"]) == {"countdown", "math"}
    for kind, extra in (("consistrm", []), ("consistrm", ["--demonstrations"]), ("acpo", []), ("reflectrm", [])):
        out = tmp_path / f"{kind}{len(extra)}.jsonl"
        cli("rewards", "build-prompts", "--kind", kind, "--pairs", pairs, "--out", out, *extra)
        data = load_json(out)
        assert {"prompt", "answer", "domain"} <= set(data.column_names), (kind, data.column_names)
        assert data.num_rows == len(out.read_text().splitlines()) > 0
        assert all(isinstance(answer, dict) for answer in data["answer"]), kind


def test_flagembedding_training_jsonl_loads_with_datasets(tmp_path):
    from embedkit.training import QueryGroup
    from embedkit.training import write_jsonl as write_training_jsonl

    groups = [QueryGroup("what is a gene", ("a gene is a unit of heredity",), ("a river flows",)),
              QueryGroup("film music", ("music written for a film",), (), instruction="Retrieve passages: "),
              QueryGroup("city river", ("a city on a river", "a river city"), ("protein", "virus"))]
    first, second = write_training_jsonl(groups[:2], tmp_path / "a.jsonl"), write_training_jsonl(groups[2:],
                                                                                               tmp_path / "b.jsonl")
    data = load_json(first, second)
    assert data.num_rows == 3 and {"query", "pos", "neg"} <= set(data.column_names)
    assert data["pos"][2] == ["a city on a river", "a river city"] and data["neg"][1] == []
