"""Training data readers (FlagEmbedding jsonl, BEIR train qrels), row expansion, weights, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.training import DatasetConfig, TrainConfig, load_task, load_train_config
from embedkit.training.data import apply_weight, task_negative_count, to_rows
from embedkit.training.trainer import plan_stages

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def flag_file(tmp_path):
    return write(tmp_path / "flag.jsonl", [
        {"query": "q1", "pos": ["p1"], "neg": ["n1", "n2", "n3"]},
        {"query": "q2", "pos": ["p2a", "p2b"], "neg": ["n4"], "prompt": "find it"},
        {"query": "q3", "pos": ["p3"]},
    ])


@pytest.fixture
def beir_dir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(4)])
    write(folder / "queries.jsonl", [{"_id": "a", "text": "query a"}, {"_id": "b", "text": "query b"}])
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\na\td0\t1\na\td1\t1\nb\td2\t1\nb\td3\t0\n")
    return folder


def test_flagembedding_jsonl(flag_file):
    task = load_task(DatasetConfig(name="flag", path=str(flag_file)))
    assert [g.query for g in task.groups] == ["q1", "q2", "q3"]
    assert task.groups[1].positives == ("p2a", "p2b") and task.groups[1].instruction == "find it"
    assert task_negative_count(task, 7) == 3  # capped by the most negatives any query has


def test_beir_train_qrels_pair_queries_with_relevant_documents(beir_dir):
    task = load_task(DatasetConfig(name="b", path=str(beir_dir), split="train"))
    by_query = {g.query: g.positives for g in task.groups}
    assert by_query == {"query a": ("T0 text 0", "T1 text 1"), "query b": ("T2 text 2",)}  # score 0 is not positive


def test_rows_fill_negatives_and_apply_instructions(flag_file):
    config = DatasetConfig(name="flag", path=str(flag_file), instruction="retrieve")
    task = load_task(config)
    rows = to_rows(task, negatives=2, template="I: {instruction} Q: ", seed=0)
    assert list(rows) == ["anchor", "positive", "negative_1", "negative_2"]
    assert len(rows["anchor"]) == 4  # one row per (query, positive)
    assert rows["anchor"][0] == "I: retrieve Q: q1" and rows["anchor"][1] == "I: find it Q: q2"  # row prompt wins
    assert set(rows["negative_1"][:1] + rows["negative_2"][:1]) <= {"n1", "n2", "n3"}
    assert rows["negative_1"][1] == rows["negative_2"][1] == "n4"  # re-drawn from its own negatives
    q3 = rows["anchor"].index("I: retrieve Q: q3")
    assert rows["negative_1"][q3] in {"p1", "p2a", "p2b"}  # no negatives: other queries' passages


def test_weight_repeats_and_subsamples(flag_file):
    task = load_task(DatasetConfig(name="flag", path=str(flag_file), weight=2.0))
    assert len(apply_weight(task, 0)) == 6
    half = load_task(DatasetConfig(name="flag", path=str(flag_file), weight=0.34))
    assert len(apply_weight(half, 0)) == 1


@pytest.mark.parametrize("line, message", [
    ("{not json", "malformed JSON"),
    (json.dumps({"pos": ["p"]}), "query"),
    (json.dumps({"query": "q", "pos": []}), "no positive"),
    (json.dumps({"query": "q", "pos": ["p"], "neg": "x", "prompt": 3}), "prompt"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", [{"query": "ok", "pos": ["p"]}, line])
    with pytest.raises(DataFormatError, match=message) as error:
        load_task(DatasetConfig(name="bad", path=str(path)))
    assert "bad.jsonl, line 2" in str(error.value)


def test_config_validation_and_strategies(flag_file):
    datasets = [{"name": "x", "path": str(flag_file), "stage": 1}, {"name": "y", "path": str(flag_file), "stage": 2}]
    with pytest.raises(ValueError, match="unique"):
        TrainConfig(model="m", output_dir="o", datasets=[datasets[0], datasets[0]])
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(model="m", output_dir="o", strategy="two_stage", datasets=[{"name": "x", "path": "p"}])
    config = TrainConfig(model="m", output_dir="o", strategy="two_stage", datasets=datasets)
    tasks = [load_task(d) for d in config.datasets]
    assert [(s.name, [t.name for t in s.tasks]) for s in plan_stages(config, tasks)] == [("stage1", ["x"]), ("stage2", ["y"])]
    seq = config.model_copy(update={"strategy": "sequential"})
    assert [s.name for s in plan_stages(seq, tasks)] == ["x", "y"]
    assert config.hard_negatives == 7 and config.epochs == 1 and config.lora.r == 32  # inferred defaults


def test_shipped_configs_are_valid(tmp_path):
    from embedkit.boom import load_boom_config

    config = load_train_config(REPO / "configs" / "train_multitask.yaml")
    assert config.strategy == "batch_shuffle" and config.lora.enabled == "auto"
    boom = load_boom_config(REPO / "configs" / "boom.yaml")
    assert boom.ratios == [80, 100] and boom.merge.method == "multislerp" and boom.bag_seeds == [42, 43]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\noutput_dir: o\ndatasets: []\n")
    with pytest.raises(EmbedkitError, match=r"bad.yaml: invalid config: .*\(field 'datasets'\)"):
        load_train_config(bad)
