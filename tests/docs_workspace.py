"""The stand-in repo root the documented commands run in: ../shared/data in miniature, files, tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.docs_collect import ROOT
from tests.docs_table import Table, workspace_config_text


def demo_documents() -> list[dict[str, str]]:
    from embedkit.cli.demo import demo_corpus_path

    lines = demo_corpus_path().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    return write_lines(path, [json.dumps(record) for record in records])


#: Questions over tests.helpers.MULTIHOP_DOCS and the demo corpus, with their answers.
QUESTIONS = [
    ("q1", "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?",
     ["Chief of Protocol"]),
    ("q2", "What is bread baked from?", ["flour"]),
    ("q3", "What do plants turn sunlight into inside their chloroplasts?", ["glucose"]),
    ("q4", "Which network ran the radio sitcom Meet Corliss Archer?", ["CBS"]),
]


def write_beir(folder: Path, documents: list[dict[str, str]]) -> None:
    """A BEIR folder: the documents, one query per document (its title), test and train qrels."""
    write_records(folder / "corpus.jsonl", documents)
    write_records(folder / "queries.jsonl", [{"_id": f"q{i}", "text": doc["title"] + " " + doc["text"][:40]}
                                             for i, doc in enumerate(documents)])
    rows = [f"q{i}\t{doc['_id']}\t1" for i, doc in enumerate(documents)]
    write_lines(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", *rows[: len(rows) // 2]])
    write_lines(folder / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", *rows[len(rows) // 2:]])


def write_shared_data(shared: Path) -> None:
    """../shared/data in miniature: the layouts of the real folders, a few dozen documents each."""
    from tests.helpers import MULTIHOP_DOCS

    demo = demo_documents()
    for name in ("scifact", "cisi", "medline", "cacm", "cranfield"):
        write_beir(shared / name, demo)
    multihop = [{"_id": doc_id, "title": title, "text": text} for doc_id, title, text in MULTIHOP_DOCS]
    write_beir(shared / "hotpotqa_dev500" / "beir", multihop + demo)
    contexts = [{"id": str(i), "title": title, "paragraph_text": text, "is_supporting": i < 2}
                for i, (_, title, text) in enumerate(MULTIHOP_DOCS)]
    write_records(shared / "hotpotqa_dev500" / "dev_subsampled.jsonl", [
        {"question_id": qid, "question_text": text, "contexts": contexts,
         "answers_objects": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": answers}]}
        for qid, text, answers in QUESTIONS])
    for name, source in (("nq_open_test", "nq_open"), ("bamboogle_test", "bamboogle")):
        write_records(shared / "qa_questions" / f"{name}.jsonl", [
            {"data_source": source, "prompt": [{"content": text, "role": "user"}], "ability": "QA",
             "reward_model": {"ground_truth": ", ".join(answers), "style": "rule"},
             "extra_info": {"answer": answers, "index": i, "question": text}}
            for i, (_, text, answers) in enumerate(QUESTIONS)])


def write_search_r1_parquet(path: Path) -> None:
    """Questions in Search-R1's parquet layout (verl's: prompt, reward_model, extra_info)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "hotpotqa", "prompt": [{"content": text, "role": "user"}], "ability": "fact-reasoning",
             "reward_model": {"ground_truth": {"target": answers}, "style": "rule"},
             "extra_info": {"index": i, "split": "test"}} for i, (_, text, answers) in enumerate(QUESTIONS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_imported_index(workspace: Path, model: Path) -> None:
    """wiki-18.jsonl (pyserini `id`/`contents`) and e5_Flat.index: row i = line i, as Search-R1's files."""
    import faiss
    from sentence_transformers import SentenceTransformer

    documents = demo_documents()
    write_records(workspace / "wiki-18.jsonl", [{"id": doc["_id"], "contents": f"\"{doc['title']}\"\n{doc['text']}"}
                                                for doc in documents])
    vectors = SentenceTransformer(str(model), device="cpu").encode(
        [f"{doc['title']}\n{doc['text']}" for doc in documents], normalize_embeddings=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(workspace / "e5_Flat.index"))


def write_trec_run(path: Path, documents: list[dict[str, str]], shift: int) -> None:
    lines = [f"q{i} Q0 {documents[(i + rank + shift) % len(documents)]['_id']} {rank + 1} {1.0 / (rank + 1):.4f} doc"
             for i in range(len(documents)) for rank in range(5)]
    write_lines(path, lines)


def write_image(path: Path, colour: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


def write_tiny_lm(out: Path) -> None:
    """A tiny random Qwen2 causal LM whose generation config favours ending early (sequence_bias on EOS).

    Its turns end after a few sampled tokens (at once when greedy) instead of running to max_new_tokens, so
    the agent, judge and prompt-building commands that generate with it stay short on a CPU.
    """
    from transformers import GenerationConfig

    from agents.rewards.tiny import build_tiny_judge

    build_tiny_judge(out, texts=[text for _, text, _ in QUESTIONS], hidden_size=32)
    config = GenerationConfig.from_pretrained(out)
    config.sequence_bias = [[[config.eos_token_id], 5.0]]
    config.save_pretrained(out)


def write_ppe_correctness(workspace: Path) -> None:
    """Two rows in PPE's Best-of-K layout (lmarena-ai/PPE-MATH-Best-of-K) and a reward for each response."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question_id": q, "model_name": "m", "prompt": f"{q}: 2 + 2?", "scores": labels,
             **{f"response_{i + 1}": "4" if ok else "5" for i, ok in enumerate(labels)}}
            for q, labels in (("q1", [True, False, False]), ("q2", [False, True, True]))]
    pq.write_table(pa.Table.from_pylist(rows), workspace / "ppe_math.parquet")
    write_records(workspace / "ppe-rewards.jsonl", [{"id": "q1/m", "rewards": [0.9, 0.1, 0.2]},
                                                    {"id": "q2/m", "rewards": [0.5, 0.4, None]}])


def write_workspace(workspace: Path, table: Table) -> None:
    """A stand-in repo root: configs, examples, the files the docs assume, and tiny models."""
    from embedkit.training.tiny import build_tiny_bert

    write_shared_data(workspace.parent / "shared" / "data")
    (workspace / "configs").mkdir(parents=True)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        (workspace / "configs" / path.name).write_text(workspace_config_text(path.name, table), encoding="utf-8")
    (workspace / "examples").symlink_to(ROOT / "examples")

    tiny_bert = build_tiny_bert(workspace / "models" / "tiny-bert", seed=3, hidden_size=32, layers=1)
    for name, seed in (("base", 3), ("runs/a", 4), ("runs/b", 5)):
        build_tiny_bert(workspace / name, seed=seed, hidden_size=32, layers=1)
    write_tiny_lm(workspace / "models" / "tiny-lm")

    demo = demo_documents()
    write_records(workspace / "corpus.jsonl", demo[:20])  # two halves: `index merge` joins disjoint ids
    write_records(workspace / "big.jsonl", demo[20:])
    write_records(workspace / "new_docs.jsonl", [{"_id": "new1", "title": "Tides", "text": "The Moon pulls the sea."}])
    write_records(workspace / "new.jsonl", [{"_id": "new2", "title": "Rivers", "text": "Rivers carry water to sea."}])
    write_lines(workspace / "docs.tsv", ["pid\tpassage", *(f"{doc['_id']}\t{doc['text']}" for doc in demo)])
    write_lines(workspace / "updates.tsv", ["pid\tpassage", "demo01\tMitochondria make ATP."])
    write_lines(workspace / "ids.txt", ["demo38", "demo39"])
    write_lines(workspace / "queries.tsv", [f"q{i}\t{doc['title']}" for i, doc in enumerate(demo[:5])])
    questions = [{"id": qid, "question": text, "answers": answers} for qid, text, answers in QUESTIONS]
    write_records(workspace / "q.jsonl", questions)
    write_records(workspace / "train.jsonl", questions)
    write_records(workspace / "old.jsonl", [{"query": doc["title"], "pos": [doc["text"]],
                                             "neg": [demo[(i + 7) % len(demo)]["text"]]}
                                            for i, doc in enumerate(demo)])
    write_records(workspace / "triplets.jsonl", [{"query": f"what is {doc['title'].lower()}?", "pos": [doc["text"]],
                                                  "neg": [demo[(i + 11) % len(demo)]["text"]]}
                                                 for i, doc in enumerate(demo)])
    write_records(workspace / "photos.jsonl", [{"id": "p1", "image": "cat.png", "text": "an orange square"},
                                               {"id": "p2", "image": "query.png"}, {"id": "p3", "text": "a red circle"}])
    write_records(workspace / "new-pairs.jsonl", [{"query": doc["title"] + "?", "pos": [doc["text"]],
                                                   "neg": [demo[(i + 3) % len(demo)]["text"]]}
                                                  for i, doc in enumerate(demo[:16])])
    for name, shift in (("runs/dense.trec", 0), ("runs/bm25.trec", 1), ("a.trec", 0), ("b.trec", 1),
                        ("c.trec", 2), ("run.trec", 0)):
        write_trec_run(workspace / name, demo, shift)
    write_lines(workspace / "qrels.trec", [f"q{i} 0 {doc['_id']} 1" for i, doc in enumerate(demo)])
    write_search_r1_parquet(workspace / "search_r1" / "test.parquet")
    write_ppe_correctness(workspace)
    write_search_r1_parquet(workspace / "data" / "nq_hotpotqa_train" / "test.parquet")
    write_imported_index(workspace, tiny_bert)
    write_image(workspace / "cat.png", "orange")
    write_image(workspace / "query.png", "red")
    write_lines(workspace / "notes.txt", ["Alice met Bob in Paris in 1999.", "The white strawberry grew in Oslo."])
    write_records(workspace / "my_texts.jsonl", [{"text": "Alice met Bob in Paris in 1999."}])
    write_lines(workspace / "my-merge.yml", ["merge_method: linear", "models:", "  - model: runs/a",
                                             "    parameters: {weight: 0.5}", "  - model: runs/b",
                                             "    parameters: {weight: 0.5}", "dtype: float32"])
