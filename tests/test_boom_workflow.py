"""BOOM end to end on a tiny model: bags -> merge -> lineage; `embedkit boom update` -> merged update
with lineage; `embedkit index reencode` for the updated model; `embedkit boom eval` table."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

pytest.importorskip("mergekit")

from embedkit.boom import BoomConfig, boom_train, read_lineage  # noqa: E402
from embedkit.cli import main  # noqa: E402
from embedkit.training.tiny import build_tiny_bert  # noqa: E402

pytestmark = pytest.mark.slow  # trains and merges models

PAIRS = [
    ("what protein is in the cell", "the protein of the cell"),
    ("who is the king", "the king was born in the capital"),
    ("what is the capital city", "the capital city of the country"),
    ("cancer treatment study", "patients treatment of cancer"),
    ("which film music", "film music band album"),
    ("heart risk in patients", "heart disease risk of patients"),
    ("search retrieval index", "embedding vector index search"),
    ("merge the model", "merge train test model"),
]
# No warm-up: with one step, a warm-up would make that step's learning rate 0 and nothing would train.
TRAINING = {"batch_size": 2, "learning_rate": 1e-2, "device": "cpu", "max_steps": 1, "logging_steps": 1,
            "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("boom")
    base = build_tiny_bert(root / "base", seed=0, pooling="cls", prompts={"query": "query: "})
    old = root / "old.jsonl"
    old.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in PAIRS[:5]))
    new = root / "new.jsonl"
    new.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in PAIRS[5:]))
    config = BoomConfig(model=str(base), output_dir=str(root / "run"), datasets=[{"name": "old", "path": str(old)}],
                        bags=[60, 100], merge={"method": "linear"}, training=TRAINING)
    result = boom_train(config, quiet=True)
    return root, base, old, new, config, result


def test_boom_train_merges_bags_and_records_lineage(setup):
    from sentence_transformers import SentenceTransformer

    root, base, old, new, config, result = setup
    bag0, bag1 = (load_file(str(b.path / "model.safetensors")) for b in result.bags)
    merged = load_file(str(result.model_dir / "model.safetensors"))
    for name, tensor in merged.items():
        if tensor.is_floating_point():
            assert (tensor - (bag0[name] + bag1[name]) / 2).abs().max().item() < 1e-6
    assert (bag0["encoder.layer.0.attention.self.query.weight"] != bag1["encoder.layer.0.attention.self.query.weight"]).any()
    lineage = read_lineage(result.model_dir)
    assert lineage["kind"] == "boom_train" and lineage["merge"]["method"] == "linear"
    assert [(b["ratio"], b["seed"]) for b in lineage["bags"]] == [(60, 42), (100, 43)]
    assert [b["data"][0]["groups"] for b in lineage["bags"]] == [3, 5]  # 60% of 5 queries, then all
    model = SentenceTransformer(str(result.model_dir), device="cpu")
    assert model.prompts["query"] == "query: " and model[1].get_config_dict()["pooling_mode"] == "cls"
    # A rerun reuses finished bags instead of training them again.
    again = boom_train(config, quiet=True)
    assert all(b.reused for b in again.bags)


def test_update_cli_reencode_and_eval(setup, tmp_path, capsys):
    from embedkit.data import Document
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index.base import Index
    from embedkit.index.dense import build_dense_index

    root, base, old, new, config, result = setup
    out = tmp_path / "v2"
    status = main(["boom", "update", "--base", str(result.model_dir), "--new-data", str(new), "--history", str(old),
                   "--history-ratio", "0.4", "--output-dir", str(out), "--batch-size", "2", "--max-steps", "2",
                   "--device", "cpu", "-q"])
    assert status == 0
    lineage = read_lineage(out / "model")
    assert lineage["kind"] == "boom_update" and lineage["history_ratio"] == 0.4
    assert lineage["history"][0]["groups"] == 2 and lineage["new_data"][0]["groups"] == 3  # 40% of 5 old queries
    assert lineage["merge"]["method"] == "multislerp"
    assert lineage["parents"][0]["kind"] == "boom_train"  # the base's lineage travels with the update
    assert (out / "model" / "mergekit_config.yml").exists()

    docs = [Document(id=f"d{i}", text=p) for i, (_, p) in enumerate(PAIRS)]
    index_dir = tmp_path / "index"
    build_dense_index(docs, Encoder(EncoderConfig(model=str(result.model_dir), device="cpu")), index_dir, quiet=True)
    before = Index.load(index_dir).manifest.encoder.fingerprint
    assert main(["index", "reencode", str(index_dir), "--model", str(out / "model"), "--device", "cpu", "-q"]) == 0
    manifest = Index.load(index_dir).manifest
    assert manifest.encoder.fingerprint != before and manifest.num_docs == len(docs)
    assert manifest.history[-1].action == "reencode"
    assert Index.load(index_dir).search("who is the king", k=3)[0]

    beir = tmp_path / "tiny_beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in docs))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(PAIRS)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(PAIRS))))
    capsys.readouterr()
    assert main(["boom", "eval", "--model", str(out / "model"), "--datasets", str(beir), "--device", "cpu", "-q",
                 "--output", str(tmp_path / "table.md")]) == 0
    printed = capsys.readouterr().out
    assert "| tiny_beir |" in printed and "nDCG@10" in printed
    assert (tmp_path / "table.md").read_text().startswith("| dataset | nDCG@10")


def test_cli_user_errors_exit_2(setup, tmp_path, capsys):
    root, base, old, new, config, result = setup
    assert main(["boom", "merge", "--models", str(base), str(result.bags[0].path), "--method", "slerp",
                 "--out", str(tmp_path / "m"), "--t", "0.3"]) == 0
    assert main(["boom", "merge", "--models", str(base), str(tmp_path), "--out", str(tmp_path / "bad")]) == 2
    assert "modules.json" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    assert main(["boom", "update", "--base", str(base), "--new-data", str(bad), "--output-dir", str(tmp_path / "u")]) == 2
    assert "bad.jsonl, line 1" in capsys.readouterr().err
