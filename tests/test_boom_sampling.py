"""BOOM sampling: per dataset, without replacement, reproducible from the recorded seed."""

from __future__ import annotations

import pytest

from embedkit.boom import BoomConfig, sample_task, sample_tasks
from embedkit.errors import EmbedkitError
from embedkit.training import DatasetConfig, QueryGroup, TaskData


def task(name: str, n: int) -> TaskData:
    groups = tuple(QueryGroup(f"{name}-q{i}", (f"{name}-p{i}",)) for i in range(n))
    return TaskData(config=DatasetConfig(name=name, path=f"{name}.jsonl"), groups=groups, source_rows=n)


def test_each_dataset_keeps_its_share_without_replacement():
    big, small = task("big", 100), task("small", 10)
    bag = sample_tasks([big, small], 0.6, seed=7)
    assert [len(t.groups) for t in bag] == [60, 6]
    for sampled, source in zip(bag, [big, small], strict=True):
        queries = [g.query for g in sampled.groups]
        assert len(set(queries)) == len(queries)  # no group drawn twice
        assert set(queries) <= {g.query for g in source.groups}
    assert bag[0].sampled_from == {"bag_fraction": 0.6, "bag_seed": 7, "bag_groups": 60, "of": 100}


def test_seed_reproduces_and_changes_the_bag():
    data = task("d", 50)
    first = [g.query for g in sample_task(data, 0.5, seed=1).groups]
    assert first == [g.query for g in sample_task(data, 0.5, seed=1).groups]
    assert first != [g.query for g in sample_task(data, 0.5, seed=2).groups]
    assert len(sample_task(data, 1.0, seed=3).groups) == 50


def test_history_sample_is_forty_percent_by_default():
    from embedkit.boom import DEFAULT_HISTORY_RATIO

    assert DEFAULT_HISTORY_RATIO == 0.4
    assert len(sample_task(task("h", 25), DEFAULT_HISTORY_RATIO, seed=0, purpose="history").groups) == 10


def test_bad_ratios_are_rejected():
    with pytest.raises(EmbedkitError):
        sample_task(task("d", 5), 0.0, seed=0)
    with pytest.raises(ValueError, match=r"bags\.1\.ratio[\s\S]*less than or equal to 100"):
        BoomConfig(model="m", output_dir="o", datasets=[{"name": "d", "path": "p"}], bags=[80, 120])
    with pytest.raises(ValueError, match="seeds"):
        BoomConfig(model="m", output_dir="o", datasets=[{"name": "d", "path": "p"}], bags=[60, 60, 60], seeds=[1])
    config = BoomConfig(model="m", output_dir="o", datasets=[{"name": "d", "path": "p"}], bags=[60, 60, 60])
    assert config.bag_seeds == [42, 43, 44] and config.merge.method == "multislerp"
