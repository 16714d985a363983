"""Incremental merge updates: train a light update model on new data plus a sample of the historical
data, then merge it into the existing model — no retraining from scratch.

The example needs a trained model and data files, so it is not run here:

>>> boom_update("runs/boom/model", new_data=[DatasetConfig(name="new", path="new.jsonl")],
...             history=[DatasetConfig(name="scifact", path="../shared/data/scifact")],
...             output_dir="runs/boom-v2", update=UpdateSettings(weight=0.3))  # doctest: +SKIP

The merge is stated, not implied: the update model gets weight `update.weight` (w) and the current
model 1 - w. With `linear` the result is (1 - w)·current + w·update tensor by tensor; with task-vector
methods (task_arithmetic, ties, dare_ties, multislerp with a base) the vectors are taken relative to
`update.merge_base` — by default the original backbone, so that
merged = backbone + (1 - w)·(current - backbone) + w·(update - backbone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.boom.config import DEFAULT_SEED, MergeSettings, UpdateSettings
from embedkit.boom.lineage import describe_tasks, read_lineage, write_lineage
from embedkit.boom.sampling import sample_tasks
from embedkit.errors import EmbedkitError
from embedkit.training.config import DatasetConfig, TrainConfig
from embedkit.training.data import TaskData, load_tasks
from embedkit.training.distributed import barrier, is_main_process
from embedkit.training.trainer import TRAINING_RECORD, train

LOG = logging.getLogger(__name__)


@dataclass
class UpdateResult:
    model_dir: Path
    update_model_dir: Path
    train_seconds: float
    merge_seconds: float
    history_groups: int
    new_groups: int


@dataclass(frozen=True)
class UpdatePlan:
    """What mergekit is asked to do for one update (recorded in the lineage)."""

    models: list[str]
    weights: list[float] | None
    base_model: str | None
    parameters: dict[str, Any]


def backbone_of(model: str) -> str:
    """The original base model a BOOM model descends from (from its lineage); a model without lineage
    is its own backbone."""
    lineage = read_lineage(model) if Path(model).is_dir() else None
    if lineage is None:
        return model
    if lineage.get("backbone"):
        return str(lineage["backbone"])
    return str(lineage.get("base_model") or model)


def update_merge_plan(current: str, update: str, backbone: str, merge: MergeSettings,
                      settings: UpdateSettings) -> UpdatePlan:
    """The models, weights and base of the merge that puts `update` into `current` with weight w."""
    from embedkit.merging.methods import get_merge_method, stated_weight_parameters
    from embedkit.training.modeling import resolve_model_name

    method = get_merge_method(merge.method)
    w = settings.weight
    if merge.weights is not None:
        raise EmbedkitError("an update's merge weights are set by update.weight (CLI: --update-weight), "
                            "not merge.weights")
    parameters = dict(merge.parameters)
    if method.exact_models == 2:  # slerp: t = 0 is the current model, t = 1 the update model
        if "t" in parameters and parameters["t"] != w:
            raise EmbedkitError(f"slerp's t ({parameters['t']}) and update.weight ({w}) disagree; set one")
        parameters["t"] = w
        return UpdatePlan([current, update], None, None, parameters)
    # The update weight is a stated formula: the method's renormalisation (ties) must not rescale it.
    parameters = stated_weight_parameters(method.name, parameters)
    base = None
    if method.needs_base or merge.base_model is not None or (method.accepts_base and merge.relative_to_base):
        if merge.base_model is not None:
            base = resolve_model_name(merge.base_model)
        else:
            base = {"backbone": backbone, "current": current}.get(settings.merge_base, settings.merge_base)
            base = resolve_model_name(base)
    if base is None:
        return UpdatePlan([current, update], [1.0 - w, w], None, parameters)
    if base == current:  # the current model's task vector is zero: current + w·(update - current)
        return UpdatePlan([current, update], [1.0, w], base, parameters)
    # mergekit reads the base's weight as nothing (a base has no task vector of its own).
    return UpdatePlan([base, current, update], [1.0, 1.0 - w, w], base, parameters)


def merge_update(current: str, update: str, out: str | Path, *, merge: MergeSettings | None = None,
                 settings: UpdateSettings | None = None, backbone: str | None = None):
    """Merge a trained update model into the current model as `settings` state; returns (result, plan)."""
    from embedkit.merging import merge_models
    from embedkit.training.modeling import resolve_model_name

    merge = merge or MergeSettings()
    settings = settings or UpdateSettings()
    current = resolve_model_name(current)
    plan = update_merge_plan(current, str(update), resolve_model_name(backbone or backbone_of(current)), merge,
                             settings)
    merged = merge_models(plan.models, out, method=merge.method, weights=plan.weights, base_model=plan.base_model,
                          parameters=plan.parameters or None, overwrite=True)
    return merged, plan


def check_update_merge(current: str, output_dir: Path, backbone: str, merge: MergeSettings,
                       settings: UpdateSettings, training: dict[str, Any]
                       ) -> tuple[MergeSettings, UpdateSettings, str]:
    """Every precondition of the update's merge, checked before the update model trains (see
    `embedkit.boom.preflight`). A plain transformers merge base is replaced by the embedder built from it;
    returns the merge and update settings and the backbone to merge with."""
    from embedkit.boom.preflight import (
        check_base_folder,
        check_recipe,
        embedder_base,
        is_plain_transformers,
        require_mergekit,
    )

    require_mergekit()
    plan = update_merge_plan(current, str(output_dir / "update"), backbone, merge, settings)
    check_base_folder(plan.base_model)
    check_recipe(merge.method, plan.models, plan.weights, plan.base_model, plan.parameters or None)
    if not (is_plain_transformers(plan.base_model) and is_main_process()):
        return merge, settings, backbone
    built = embedder_base(str(plan.base_model), training, output_dir)
    if merge.base_model is not None:
        return merge.model_copy(update={"base_model": built}), settings, backbone
    if settings.merge_base not in ("backbone", "current"):
        return merge, settings.model_copy(update={"merge_base": built}), backbone
    return merge, settings, built if plan.base_model == backbone else backbone


def boom_update(
    base: str,
    *,
    new_data: Sequence[DatasetConfig],
    history: Sequence[DatasetConfig],
    output_dir: str | Path,
    history_ratio: float | None = None,
    merge: MergeSettings | None = None,
    update: UpdateSettings | None = None,
    training: dict[str, Any] | None = None,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
) -> UpdateResult:
    """Train `<output_dir>/update` on new data + `history_ratio` of each historical dataset (sampled per
    dataset without replacement), merge it into `base` as `update` states (weight, merge base, where the
    update model starts) into `<output_dir>/model`, and record the lineage (the base's own is embedded).
    """
    from embedkit.training.modeling import resolve_model_name

    update = update or UpdateSettings()
    if history_ratio is not None:
        update = update.model_copy(update={"history_ratio": history_ratio})
    history_ratio = update.history_ratio
    if not new_data:
        raise EmbedkitError("an update needs new data")
    if not 0 <= history_ratio <= 1:
        raise EmbedkitError(f"history ratio must be in [0, 1], got {history_ratio}")
    names = [d.name for d in [*new_data, *history]]
    if len(set(names)) != len(names):
        raise EmbedkitError(f"dataset names must be unique across new data and history, got {names}")
    merge = merge or MergeSettings()
    if merge.weights is not None:
        raise EmbedkitError("an update's merge weights are set by update.weight (CLI: --update-weight)")
    output_dir = Path(output_dir)
    base_path = resolve_model_name(base)
    backbone = resolve_model_name(backbone_of(base_path))
    merge, update, merge_backbone = check_update_merge(base_path, output_dir, backbone, merge, update,
                                                       training or {})
    new_tasks = load_tasks(new_data)
    history_tasks: list[TaskData] = (
        sample_tasks(load_tasks(history), history_ratio, seed, purpose="history") if history and history_ratio > 0 else []
    )
    update_dir = output_dir / "update"
    start_model = base_path if update.init == "current" else backbone
    train_config = TrainConfig(
        model=start_model,
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

    result = UpdateResult(
        model_dir=output_dir / "model",
        update_model_dir=update_dir,
        train_seconds=train_seconds,
        merge_seconds=0.0,
        history_groups=sum(len(t.groups) for t in history_tasks),
        new_groups=sum(len(t.groups) for t in new_tasks),
    )
    if not is_main_process():  # one process merges and writes; the others wait
        barrier()
        return result
    started = time.perf_counter()
    merged, plan = merge_update(base_path, str(update_dir), output_dir / "model", merge=merge, settings=update,
                                backbone=merge_backbone)
    result.merge_seconds = time.perf_counter() - started
    write_lineage(
        output_dir / "model",
        {
            "kind": "boom_update",
            "base_model": base,
            "backbone": backbone,
            "update_model": str(update_dir),
            "update_init": update.init,
            "update_started_from": start_model,
            "update_weight": update.weight,
            "new_data": describe_tasks(new_tasks),
            "history": describe_tasks(history_tasks),
            "history_ratio": history_ratio,
            "seed": seed,
            "merge": {"method": merge.method, "models": plan.models, "weights": plan.weights,
                      "base_model": plan.base_model, "merge_base": update.merge_base,
                      "parameters": plan.parameters, "mergekit_config": merged.mergekit_config},
            "training": training or {},
            "parents": [p for p in [read_lineage(base_path)] if p is not None],
        },
    )
    from embedkit.boom.train import _refresh_card

    _refresh_card(output_dir / "model")
    barrier()
    return result
