"""BOOM's merge controls through `embedkit boom train/update`: the update weight holds for `ties` relative to
the current model (mergekit's renormalisation is switched off, tensor by tensor against the formula); every
merge precondition is checked before any model trains; a plain decoder checkpoint works as the task-vector
base; the merging granularity is a setting of the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytest.importorskip("mergekit")

from embedkit.training.tiny import build_tiny_bert, write_vocab  # noqa: E402
from tests.helpers import TOPIC_TRIPLES, write_jsonl  # noqa: E402
from tests.test_index_integrity import assert_user_error, embedkit  # noqa: E402

pytestmark = pytest.mark.slow  # trains and merges tiny models

PAIRS = [(query, positive) for query, positive, _ in TOPIC_TRIPLES]
TRAINING = {"batch_size": 2, "learning_rate": 1e-2, "device": "cpu", "max_steps": 1, "warmup_ratio": 0.0,
            "logging_steps": 1}


def weights(folder: Path) -> dict:
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if v.is_floating_point()}


def assert_tensorwise(merged: dict, expected: dict, tol: float = 1e-5) -> None:
    assert set(merged) == set(expected)
    for name, tensor in merged.items():
        assert (tensor - expected[name]).abs().max().item() < tol, name


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    current = build_tiny_bert(root / "current", seed=1, pooling="cls")
    data = write_jsonl(root / "new.jsonl", [{"query": q, "pos": [p]} for q, p in PAIRS])
    return root, current, data


def boom_yaml(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_ties_update_relative_to_the_current_model_keeps_the_update_weight(setup, tmp_path):
    """w = 0.25 used to give the update model itself (mergekit's ties divided by the weight sum)."""
    root, current, data = setup
    out = tmp_path / "v2"
    training = boom_yaml(tmp_path / "training.yaml", **TRAINING)
    result = embedkit("boom", "update", "--base", current, "--new-data", data, "--output-dir", out,
                      "--method", "ties", "--merge-base", "current", "--update-weight", "0.25", "--density", "1",
                      "--training-config", training, "-q")
    assert result.returncode == 0, result.stderr
    c, u, m = weights(current), weights(out / "update"), weights(out / "model")
    assert max((u[k] - c[k]).abs().max().item() for k in c) > 1e-4  # the update model moved
    assert_tensorwise(m, {k: c[k] + 0.25 * (u[k] - c[k]) for k in c})
    recipe = yaml.safe_load((out / "model" / "mergekit_config.yml").read_text())
    assert recipe["parameters"]["normalize"] is False


def test_ties_update_with_trimming_scales_the_kept_entries_by_w(setup, tmp_path):
    from embedkit.boom import MergeSettings, UpdateSettings, merge_update

    root, current, _ = setup
    update = build_tiny_bert(tmp_path / "update", seed=2, pooling="cls")
    merged, _ = merge_update(str(current), str(update), tmp_path / "m", merge=MergeSettings(method="ties"),
                             settings=UpdateSettings(weight=0.25, merge_base="current"))
    c, u, m = weights(current), weights(update), weights(merged.path)
    trimmed = 0
    for name in c:
        delta, moved = u[name] - c[name], m[name] - c[name]
        kept = moved != 0
        if not (delta != 0).any():  # e.g. LayerNorm weights: both models start at ones, no task vector
            assert not kept.any(), name
            continue
        assert (moved[kept] - 0.25 * delta[kept]).abs().max().item() < 1e-5, name  # w·τ where TIES keeps τ
        assert kept.float().mean().item() <= 0.5 + 1 / delta.numel(), name  # density 0.5: half trimmed
        trimmed += 1
    assert trimmed > 0


def test_ties_normalize_true_is_refused_before_the_update_trains(setup, tmp_path):
    root, current, data = setup
    config = boom_yaml(tmp_path / "boom.yaml", model=str(current), output_dir=str(tmp_path / "unused"),
                       datasets=[{"name": "d", "path": str(data)}],
                       merge={"method": "ties", "parameters": {"normalize": True}})
    out = tmp_path / "v2"
    result = embedkit("boom", "update", "--config", config, "--base", current, "--new-data", data,
                      "--output-dir", out, "--merge-base", "current", "--max-steps", "1", "--device", "cpu", "-q")
    assert_user_error(result, "normalize", "update weight")
    assert not (out / "update").exists()


@pytest.mark.parametrize(("merge", "bags", "needle"), [
    ({"method": "slerp"}, [50, 80, 100], "exactly 2 models"),
    ({"method": "ties", "base_model": "no/such/folder"}, [80, 100], "does not exist"),
    ({"method": "task_arithmetic", "base_model": "EMPTY"}, [80, 100], "not a model"),
    ({"method": "linear", "weights": [1.0, 3.0]}, [80, 100], None),
])
def test_merge_preconditions_fail_before_any_bag_trains(setup, tmp_path, merge, bags, needle):
    root, current, data = setup
    if merge.get("base_model") == "EMPTY":
        (tmp_path / "empty").mkdir()
        merge = {**merge, "base_model": str(tmp_path / "empty")}
    if needle is None:  # a sound recipe: the check lets it through (the run is not made here)
        from embedkit.boom import BoomConfig
        from embedkit.boom.train import check_bag_merge

        config = BoomConfig(model=str(current), output_dir=str(tmp_path / "run"), bags=bags, merge=merge,
                            datasets=[{"name": "d", "path": str(data)}], training=TRAINING)
        assert check_bag_merge(config) is None
        return
    config = boom_yaml(tmp_path / "boom.yaml", model=str(current), output_dir=str(tmp_path / "run"), bags=bags,
                       merge=merge, datasets=[{"name": "d", "path": str(data)}], training=TRAINING)
    result = embedkit("boom", "train", "--config", config, "-q")
    assert_user_error(result, needle)
    assert not (tmp_path / "run" / "bags").exists()  # refused before the first bag trained


def tiny_decoder(folder: Path) -> Path:
    import torch
    from transformers import BertTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True)
    tokenizer = BertTokenizerFast(vocab=str(write_vocab(folder.parent / "vocab.txt")))
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_plain_decoder_checkpoint_is_the_task_vector_base(setup, tmp_path):
    """A plain transformers decoder folder as `model` and merge base: the run merges relative to the
    embedder the bags started from (it used to be refused after every bag had trained)."""
    root, _, data = setup
    decoder = tiny_decoder(tmp_path / "qwen")
    run = tmp_path / "run"
    config = boom_yaml(tmp_path / "boom.yaml", model=str(decoder), output_dir=str(run), bags=[50, 100],
                       merge={"method": "task_arithmetic", "weights": [0.5, 0.5]},
                       datasets=[{"name": "d", "path": str(data), "instruction": "find the passage"}],
                       training=TRAINING)
    result = embedkit("boom", "train", "--config", config, "-q")
    assert result.returncode == 0, result.stderr
    base, b0, b1 = weights(run / "merge-base"), weights(run / "bags" / "bag-0"), weights(run / "bags" / "bag-1")
    assert_tensorwise(weights(run / "model"), {k: base[k] + 0.5 * (b0[k] - base[k]) + 0.5 * (b1[k] - base[k])
                                               for k in base})
    lineage = json.loads((run / "model" / "embedkit_lineage.json").read_text())
    assert lineage["merge"]["base_model"] == str(run / "merge-base")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run / "model"), device="cpu")
    assert "d" in model.prompts  # the bags' prompts, not the untrained base's


def test_granularity_dataset_trains_one_model_per_dataset_and_merges_them(setup, tmp_path):
    root, current, data = setup
    other = write_jsonl(tmp_path / "other.jsonl", [{"query": p, "pos": [q]} for q, p in PAIRS])
    run = tmp_path / "run"
    config = boom_yaml(tmp_path / "boom.yaml", model=str(current), output_dir=str(run), granularity="dataset",
                       merge={"method": "linear"}, training=TRAINING,
                       datasets=[{"name": "new", "path": str(data)}, {"name": "other", "path": str(other)}])
    result = embedkit("boom", "train", "--config", config, "-q")
    assert result.returncode == 0, result.stderr
    trained = [json.loads((run / "bags" / f"bag-{i}" / "embedkit_training.json").read_text()) for i in (0, 1)]
    assert [[d["name"] for d in t["datasets"]] for t in trained] == [["new"], ["other"]]
    assert [t["datasets"][0]["groups"] for t in trained] == [len(PAIRS), len(PAIRS)]  # all of it, not a bag
    b0, b1 = weights(run / "bags" / "bag-0"), weights(run / "bags" / "bag-1")
    assert_tensorwise(weights(run / "model"), {k: (b0[k] + b1[k]) / 2 for k in b0})
    lineage = json.loads((run / "model" / "embedkit_lineage.json").read_text())
    assert lineage["granularity"] == "dataset" and [b["label"] for b in lineage["bags"]] == ["new", "other"]


@pytest.mark.parametrize(("extra", "needle"), [
    ({"granularity": "task_type"}, "task_type on every dataset"),
    ({"granularity": "dataset", "bags": [80, 100]}, "`bags` applies to granularity: bag only"),
    ({"granularity": "dataset", "merge": {"method": "linear", "weights": [1, 2, 3]}}, "3 merge weights for 2"),
])
def test_granularity_settings_are_checked(setup, tmp_path, extra, needle):
    root, current, data = setup
    config = boom_yaml(tmp_path / "boom.yaml", model=str(current), output_dir=str(tmp_path / "run"),
                       training=TRAINING, **extra,
                       datasets=[{"name": "a", "path": str(data)}, {"name": "b", "path": str(data)}])
    assert_user_error(embedkit("boom", "train", "--config", config, "-q"), needle)
    assert not (tmp_path / "run").exists()


def test_readme_states_what_the_strategies_and_granularities_do():
    """The README named `mixed`'s negatives "the smallest count over tasks" and one `sequential` order."""
    from typing import get_args

    from embedkit.boom.config import BoomConfig
    from embedkit.training.config import TrainConfig

    readme = (Path(__file__).resolve().parent.parent / "embedkit" / "boom" / "README.md").read_text()
    assert "smallest" not in readme
    for field, model in (("mixed_negatives", TrainConfig), ("sequential_order", TrainConfig),
                         ("granularity", BoomConfig)):
        for value in get_args(model.model_fields[field].annotation):
            assert f"`{value}`" in readme or f"`{field}: {value}`" in readme, (field, value)


def run_report(tmp_path: Path, metrics_by_seed: dict[int, dict[str, dict[str, float]]], ood: list[str]) -> str:
    """`benchmarks/boom_experiment.py --part report` over state files written here (no training)."""
    import os
    import subprocess
    import sys

    work = tmp_path / "work"
    for seed, models in metrics_by_seed.items():
        (work / f"seed-{seed}").mkdir(parents=True)
        state = {"train_seconds": {m: 1.0 for m in models},
                 "metrics": {m: {k: {"nDCG@10": v} for k, v in values.items()} for m, values in models.items()}}
        (work / f"seed-{seed}" / "state-all.json").write_text(json.dumps(state))
    (tmp_path / "shared").mkdir()
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "boom_experiment.py"
    result = subprocess.run([sys.executable, str(script), "--part", "report", "--work-dir", str(work),
                             "--seeds", *map(str, metrics_by_seed), "--ood", *ood,
                             "--results-name", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "EMBEDKIT_SHARED_DATA": str(tmp_path / "shared")})
    assert result.returncode == 0, result.stderr
    return (tmp_path / "report.md").read_text()


def test_experiment_report_separates_bagging_from_averaging_where_fine_tuning_helps(tmp_path):
    def scores(shift: float, noise: float) -> dict[str, float]:
        return {"scifact": 0.80 + shift, "hotpotqa": 0.90, "nfcorpus": 0.30 + shift + noise, "cisi": 0.40 + noise}

    seeds = {seed: {"base": scores(0, 0), "batch_shuffle_AB": scores(0.05, noise), "boom_AB": scores(0.06, -noise),
                    "soup_AB": scores(0.06, noise)}
             for seed, noise in ((1, 0.001), (2, -0.002), (3, 0.0015))}
    text = run_report(tmp_path, seeds, ["nfcorpus", "cisi"])
    assert "model-soup control: 2 full-data runs" in text
    assert "Fine-tuning helps on nfcorpus (" in text  # cisi: no gain over the base
    assert "BOOM − model soup on nfcorpus:" in text and "not told apart from averaging runs" in text
    for seed in seeds.values():  # no soup: the table says it cannot separate the two
        del seed["soup_AB"]
    text = run_report(tmp_path / "no-soup", seeds, ["nfcorpus", "cisi"])
    assert "so bagging cannot be separated from averaging" in text
