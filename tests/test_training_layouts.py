"""Every common row layout keeps its hard negatives: `embedkit train` on the same triples written as
FlagEmbedding jsonl and as sentence-transformers layouts (jsonl and parquet) gives the same weights, so no
negative was dropped; rows that cannot be read in full are refused with file, line and columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from embedkit.training.tiny import build_tiny_bert
from tests.helpers import write_jsonl
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow  # trains a tiny model per layout

TRIPLES = [
    ("what protein is in the cell", "the protein of the cell", ["the river of the city", "film music band"]),
    ("who is the king", "the king was born in the capital", ["gene dna rna", "blood heart brain"]),
    ("what is the capital city", "the capital city of the country", ["physics chemistry", "the war of the king"]),
    ("cancer treatment study", "patients treatment of cancer", ["film music band album", "the city river"]),
]
TRAINING = {"batch_size": 2, "learning_rate": 1e-2, "device": "cpu", "max_steps": 1, "warmup_ratio": 0.0,
            "hard_negatives": 2, "logging_steps": 1, "save_steps": 1000}


def flag_rows() -> list[dict]:
    return [{"query": q, "pos": [p], "neg": n} for q, p, n in TRIPLES]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


LAYOUTS = {
    # sentence-transformers hub layouts: `query` instead of `anchor` (many hub datasets), numbered negatives,
    # a list column; each once in jsonl, once in parquet.
    "query_positive_negative_1_k.jsonl": [{"query": q, "positive": p, "negative_1": n[0], "negative_2": n[1]}
                                          for q, p, n in TRIPLES],
    "query_positive_negative_1_k.parquet": [{"query": q, "positive": p, "negative_1": n[0], "negative_2": n[1]}
                                            for q, p, n in TRIPLES],
    "anchor_positive_negatives.parquet": [{"anchor": q, "positive": p, "negatives": n} for q, p, n in TRIPLES],
    "question_answer_negative.jsonl": [{"question": q, "answer": p, "negative": n} for q, p, n in TRIPLES],
    # ids and scores of the texts hold no text: read past, not refused.
    "ids_and_scores.jsonl": [{"query_id": f"q{i}", "query": q, "positive_id": f"p{i}", "positive": p,
                              "negative_ids": ["a", "b"], "negative": n, "neg_scores": [0.1, 0.2]}
                             for i, (q, p, n) in enumerate(TRIPLES)],
}


def train(root: Path, model: Path, data: Path, name: str) -> dict:
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"model": str(model), "output_dir": str(root / name), "seed": 5,
                                      "datasets": [{"name": "t", "path": str(data)}], **TRAINING}))
    result = embedkit("train", "--config", config, "-q")
    assert result.returncode == 0, result.stderr
    return {k: v for k, v in load_file(str(root / name / "model.safetensors")).items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    model = build_tiny_bert(root / "base", seed=0, pooling="cls")
    flag = write_jsonl(root / "flag.jsonl", flag_rows())
    return root, model, train(root, model, flag, "flag")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_trains_exactly_as_flagembedding_rows(reference, layout):
    root, model, expected = reference
    path = root / layout
    rows = LAYOUTS[layout]
    write_parquet(path, rows) if path.suffix == ".parquet" else write_jsonl(path, rows)
    weights = train(root, model, path, path.stem + path.suffix[1:])
    # Negatives dropped (k = 0) would train on another loss: the weights would differ.
    for name, tensor in expected.items():
        assert (weights[name] - tensor).abs().max().item() < 1e-6, (layout, name)


@pytest.mark.parametrize(("row", "column"), [
    ({"query": "q", "positive": "p", "hard_negatives": ["n"]}, "hard_negatives"),
    ({"query": "q", "pos": ["p"], "neg": ["n"], "negative": "m"}, "negative"),
    ({"query": "q", "anchor": "a", "positive": "p"}, "anchor"),
    ({"sentence1": "q", "sentence2": "p", "label": 0}, "label"),
    ({"query": "q", "positive": "p", "negative_passages": ["n"]}, "negative_passages"),
    ({"query": "q", "positive": "p", "prompt": "a", "instruction": "b"}, "instruction"),
])
def test_unreadable_layouts_are_refused_with_file_line_and_columns(tmp_path, row, column):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"query": "ok", "pos": ["p"], "neg": ["n"]}, row])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "unused-model", "output_dir": str(tmp_path / "out"),
                                      "datasets": [{"name": "t", "path": str(data)}], **TRAINING}))
    result = embedkit("train", "--config", config, "-q")
    assert_user_error(result, f"{data}, line 2", f"'{column}'", "fields found: " + ", ".join(sorted(row)))
    assert not (tmp_path / "out").exists()


def test_boom_config_reads_the_same_layouts(tmp_path):
    """`embedkit boom train` refuses an unreadable row before any bag trains (and reads the others)."""
    data = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "positive": "p", "negative_1": "n"},
                                                {"query": "q2", "positive": "p2", "hard_negative": "n2"}])
    config = tmp_path / "boom.yaml"
    config.write_text(yaml.safe_dump({"model": "unused-model", "output_dir": str(tmp_path / "run"),
                                      "datasets": [{"name": "t", "path": str(data)}], "training": TRAINING}))
    result = embedkit("boom", "train", "--config", config, "-q")
    assert_user_error(result, f"{data}, line 2", "'hard_negative'")
    assert not (tmp_path / "run").exists()
    assert json.loads(data.read_text().splitlines()[0])["negative_1"] == "n"
