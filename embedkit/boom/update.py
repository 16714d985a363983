"""Incremental merge updates: train a light update model on new data plus a sample of the historical
data, then merge it into the existing model — no retraining from scratch.

>>> boom_update("runs/boom/model", new_data=[DatasetConfig(name="new", path="new.jsonl")],
...             history=[DatasetConfig(name="scifact", path="../shared/data/scifact")],
...             output_dir="runs/boom-v2")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.boom.config import DEFAULT_HISTORY_RATIO, DEFAULT_SEED, MergeSettings
from embedkit.boom.lineage import describe_tasks, read_lineage, write_lineage
from embedkit.boom.sampling import sample_tasks
from embedkit.errors import EmbedkitError
from embedkit.training.config import DatasetConfig, TrainConfig
from embedkit.training.data import TaskData, load_tasks
from embedkit.training.trainer import TRAINING_RECORD, train


@dataclass
class UpdateResult:
    model_dir: Path
    update_model_dir: Path
    train_seconds: float
    merge_seconds: float
    history_groups: int
    new_groups: int


def boom_update(
    base: str,
    *,
    new_data: Sequence[DatasetConfig],
    history: Sequence[DatasetConfig],
    output_dir: str | Path,
    history_ratio: float = DEFAULT_HISTORY_RATIO,
    merge: MergeSettings | None = None,
    training: dict[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
) -> UpdateResult:
    """Train `<output_dir>/update` from `base` on new data + `history_ratio` of each historical dataset
    (sampled per dataset without replacement), merge it with `base` into `<output_dir>/model`, and
    record the lineage (the base's own lineage is embedded).

    With the default multislerp and equal weights the result sits between the base and the update model.
    """
    from embedkit.merging import merge_models
    from embedkit.training.modeling import resolve_model_name

    if not new_data:
        raise EmbedkitError("an update needs new data")
    if not 0 <= history_ratio <= 1:
        raise EmbedkitError(f"history ratio must be in [0, 1], got {history_ratio}")
    names = [d.name for d in [*new_data, *history]]
    if len(set(names)) != len(names):
        raise EmbedkitError(f"dataset names must be unique across new data and history, got {names}")
    merge = merge or MergeSettings()
    output_dir = Path(output_dir)
    base_path = resolve_model_name(base)
    new_tasks = load_tasks(new_data)
    history_tasks: list[TaskData] = (
        sample_tasks(load_tasks(history), history_ratio, seed, purpose="history") if history and history_ratio > 0 else []
    )
    update_dir = output_dir / "update"
    train_config = TrainConfig(
        model=base_path,
        output_dir=str(update_dir),
        datasets=[t.config for t in [*new_tasks, *history_tasks]],
        seed=seed,
        **(training or {}),
    )
    if (update_dir / TRAINING_RECORD).exists():  # a finished update model from an interrupted run
        import json

        train_seconds = json.loads((update_dir / TRAINING_RECORD).read_text())["train_seconds"]
    else:
        train_seconds = train(train_config, [*new_tasks, *history_tasks], quiet=quiet).train_seconds

    started = time.perf_counter()
    from embedkit.boom.train import merge_base

    method_base = merge_base(merge, base_path)
    models = [base_path, str(update_dir)]
    if method_base is not None and method_base != base_path:
        models = [method_base, *models]
    merged = merge_models(
        models,
        output_dir / "model",
        method=merge.method,
        weights=merge.weights,
        base_model=method_base,
        parameters=merge.parameters or None,
        overwrite=True,
    )
    merge_seconds = time.perf_counter() - started
    write_lineage(
        output_dir / "model",
        {
            "kind": "boom_update",
            "base_model": base,
            "update_model": str(update_dir),
            "new_data": describe_tasks(new_tasks),
            "history": describe_tasks(history_tasks),
            "history_ratio": history_ratio,
            "seed": seed,
            "merge": {"method": merge.method, "weights": merge.weights, "base_model": method_base,
                      "parameters": merge.parameters, "mergekit_config": merged.mergekit_config},
            "training": training or {},
            "parents": [p for p in [read_lineage(base_path)] if p is not None],
        },
    )
    from embedkit.boom.train import _refresh_card

    _refresh_card(output_dir / "model")
    return UpdateResult(
        model_dir=output_dir / "model",
        update_model_dir=update_dir,
        train_seconds=train_seconds,
        merge_seconds=merge_seconds,
        history_groups=sum(len(t.groups) for t in history_tasks),
        new_groups=sum(len(t.groups) for t in new_tasks),
    )
