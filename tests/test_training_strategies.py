"""Scheduling strategies: `mixed` keeps every task's hard negatives, `sequential` orders, and suite
evaluation encodes queries with the prompts the model was trained with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.training import TrainConfig, load_task
from embedkit.training.trainer import plan_stages, stage_dataset


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    with_neg = write(tmp_path / "a.jsonl", [{"query": f"qa{i}", "pos": [f"pa{i}"], "neg": [f"na{i}x", f"na{i}y"]}
                                            for i in range(4)])
    one_neg = write(tmp_path / "b.jsonl", [{"query": f"qb{i}", "pos": [f"pb{i}"], "neg": [f"nb{i}"]} for i in range(3)])
    no_neg = write(tmp_path / "c.jsonl", [{"query": f"qc{i}", "pos": [f"pc{i}"]} for i in range(5)])
    return with_neg, one_neg, no_neg


def make(files, **overrides) -> tuple[TrainConfig, list]:
    names = ("a", "b", "c")
    types = ("retrieval", "sts", "retrieval")
    config = TrainConfig(model="m", output_dir="o", hard_negatives=7,
                         datasets=[{"name": n, "path": str(f), "task_type": t}
                                   for n, f, t in zip(names, files, types, strict=True)], **overrides)
    return config, [load_task(d) for d in config.datasets]


def test_mixed_groups_tasks_by_negative_count(files):
    config, tasks = make(files, strategy="mixed")
    [stage] = plan_stages(config, tasks)
    data = stage_dataset(stage, config)
    assert sorted(data) == ["negatives_0", "negatives_1", "negatives_2"]
    two = data["negatives_2"]
    assert two.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(two) == 4
    for row in two:  # each row keeps its own query's two negatives
        i = row["anchor"][2:]
        assert {row["negative_1"], row["negative_2"]} == {f"na{i}x", f"na{i}y"}
    assert [r["negative_1"] for r in data["negatives_1"]] == [f"nb{r['anchor'][2:]}" for r in data["negatives_1"]]
    assert data["negatives_0"].column_names == ["anchor", "positive"] and len(data["negatives_0"]) == 5


def test_mixed_groups_pool_tasks_with_equal_counts(tmp_path, files):
    other = write(tmp_path / "d.jsonl", [{"query": f"qd{i}", "pos": [f"pd{i}"], "neg": [f"nd{i}"]} for i in range(2)])
    config = TrainConfig(model="m", output_dir="o", strategy="mixed",
                         datasets=[{"name": "b", "path": str(files[1])}, {"name": "d", "path": str(other)}])
    data = stage_dataset(plan_stages(config, [load_task(d) for d in config.datasets])[0], config)
    assert len(data) == 5 and {r["anchor"][:2] for r in data} == {"qb", "qd"}  # one pooled, mixed dataset


def test_mixed_pad_gives_every_task_the_largest_count(files):
    config, tasks = make(files, strategy="mixed", mixed_negatives="pad")
    data = stage_dataset(plan_stages(config, tasks)[0], config)
    assert data.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(data) == 12
    rows = {r["anchor"]: r for r in data}
    assert {rows["qa0"]["negative_1"], rows["qa0"]["negative_2"]} == {"na0x", "na0y"}
    assert rows["qb1"]["negative_1"] == rows["qb1"]["negative_2"] == "nb1"  # its one negative, re-drawn
    assert rows["qc2"]["negative_1"] in {f"pc{i}" for i in range(5) if i != 2}  # none: other passages


@pytest.mark.parametrize("order, expected", [
    ("given", ["a", "b", "c"]),
    ("reversed", ["c", "b", "a"]),
    ("by_task_type", ["a", "c", "b"]),
])
def test_sequential_orders(files, order, expected):
    config, tasks = make(files, strategy="sequential", sequential_order=order)
    assert [s.name for s in plan_stages(config, tasks)] == expected


def test_sequential_by_task_type_with_explicit_order(files):
    config, tasks = make(files, strategy="sequential", sequential_order="by_task_type",
                         task_type_order=["sts", "retrieval"])
    assert [s.name for s in plan_stages(config, tasks)] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="does not list"):
        make(files, strategy="sequential", sequential_order="by_task_type", task_type_order=["sts"])
    with pytest.raises(ValueError, match="task_type"):
        TrainConfig(model="m", output_dir="o", strategy="sequential", sequential_order="by_task_type",
                    datasets=[{"name": "a", "path": str(files[0])}])


@pytest.mark.slow
def test_suite_evaluation_uses_the_trained_prompts(tmp_path, shared_data):
    from embedkit.training.evaluation import dataset_prompt, evaluate_suite
    from embedkit.training.tiny import build_tiny_bert

    assert dataset_prompt("x", {"x": "E: "}, {"x": "S: "}, "D: ") == "E: "
    assert dataset_prompt("x", {}, {"x": "S: "}, "D: ") == "S: "
    assert dataset_prompt("y", {}, {"x": "S: "}, "D: ") == "D: "
    prompts = {"query": "query: ", "cisi": "Instruct: find library science papers\nQuery: "}
    model = build_tiny_bert(tmp_path / "m", seed=0, prompts=prompts)
    cisi, cacm = shared_data / "cisi", shared_data / "cacm"
    if not cisi.is_dir() or not cacm.is_dir():
        pytest.skip("needs cisi and cacm in ../shared/data")
    suite = evaluate_suite(str(model), [cisi, cacm], device="cpu", quiet=True)
    assert suite.prompts == {"cisi": prompts["cisi"], "cacm": "query: "}
    plain = evaluate_suite(str(model), [cisi], device="cpu", quiet=True, use_saved_prompts=False)
    assert plain.prompts == {"cisi": "query: "}
    assert plain.metrics["cisi"]["nDCG@10"] != suite.metrics["cisi"]["nDCG@10"]


def test_negatives_grow_with_the_batch_not_with_accumulation(files):
    with pytest.raises(ValueError, match="cached_mnrl"):
        make(files, gradient_accumulation_steps=4)
    config, _ = make(files, loss="cached_mnrl", batch_size=256, mini_batch_size=16)
    from embedkit.training.losses import LOSSES, build_loss
    from embedkit.training.tiny import build_tiny_bert

    assert "gradcache" in LOSSES and config.gather_across_devices
    import tempfile

    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        model = SentenceTransformer(str(build_tiny_bert(f"{tmp}/m")), device="cpu")
        loss = build_loss(model, config)
        assert loss.mini_batch_size == 16
        assert not loss.gather_across_devices  # one process here: nothing to gather
        with pytest.raises(Exception, match="unknown loss 'nope'; choose one of"):
            build_loss(model, config.model_copy(update={"loss": "nope"}))
