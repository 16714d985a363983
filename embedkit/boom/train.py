"""BOOM: train M models from one base, each on a per-dataset sample of the data, and merge them.

Training needs a base model and the data files the config names, so the example is not run here:

>>> from embedkit.boom import boom_train, load_boom_config
>>> result = boom_train(load_boom_config("configs/boom.yaml"))  # doctest: +SKIP
>>> SentenceTransformer(str(result.model_dir))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.boom.config import BoomConfig, MergeSettings
from embedkit.boom.lineage import describe_tasks, write_lineage
from embedkit.boom.sampling import sample_tasks
from embedkit.training.data import load_tasks
from embedkit.training.distributed import barrier, is_main_process
from embedkit.training.trainer import TRAINING_RECORD, train

LOG = logging.getLogger(__name__)


@dataclass
class BagResult:
    index: int
    ratio: float
    seed: int
    path: Path
    train_seconds: float
    reused: bool = False


@dataclass
class BoomResult:
    model_dir: Path
    bags: list[BagResult] = field(default_factory=list)
    merge_seconds: float = 0.0

    @property
    def train_seconds(self) -> float:
        return sum(b.train_seconds for b in self.bags)


def merge_base(settings: MergeSettings, training_base: str) -> str | None:
    """The base model task vectors are taken relative to, or None for a plain merge.

    task_arithmetic / ties / dare_ties: the configured base, else the model the bags started from.
    multislerp: the configured base, else the training base when `relative_to_base`, else none.
    slerp interpolates exactly two models; its "base" is the first of them, not the training base.
    """
    from embedkit.merging.methods import get_merge_method
    from embedkit.training.modeling import resolve_model_name

    method = get_merge_method(settings.method)
    if method.exact_models == 2:
        return None
    if method.needs_base or settings.base_model is not None or (method.accepts_base and settings.relative_to_base):
        return resolve_model_name(settings.base_model or training_base)
    return None


def merge_inputs(models: list[str], weights: list[float] | None, base: str | None
                 ) -> tuple[list[str], list[float] | None]:
    """The model list and weights mergekit gets: the base (when any) first, carrying weight 1.0 that
    mergekit ignores (a base has no task vector of its own)."""
    if base is None:
        return list(models), None if weights is None else list(weights)
    return [base, *models], None if weights is None else [1.0, *weights]


def check_bag_merge(config: BoomConfig) -> str | None:
    """Every precondition of the bag merge, checked before training (see `embedkit.boom.preflight`); returns
    the merge base to use (a plain transformers base becomes the embedder the bags start from)."""
    from embedkit.boom.preflight import (
        check_base_folder,
        check_recipe,
        embedder_base,
        is_plain_transformers,
        require_mergekit,
    )

    require_mergekit()
    base = merge_base(config.merge, config.model)
    check_base_folder(base)
    bags = [str(config.bag_dir(u.index)) for u in config.units]
    models, weights = merge_inputs(bags, config.bag_weights, base)
    check_recipe(config.merge.method, models, weights, base, config.merge.parameters or None)
    if base is not None and is_plain_transformers(base) and is_main_process():
        base = embedder_base(base, config.training, Path(config.output_dir))
    return base


def boom_train(config: BoomConfig, *, quiet: bool = False) -> BoomResult:
    """Train every bag (bags finished by an earlier run are reused) and merge them into `<output_dir>/model`."""
    import time

    from embedkit.merging import merge_models

    base = check_bag_merge(config)  # before any bag trains: a merge that cannot run fails now
    tasks = load_tasks(config.datasets)
    result = BoomResult(model_dir=config.model_dir)
    bag_records = []
    by_name = {t.name: t for t in tasks}
    for unit in config.units:
        index, ratio, seed = unit.index, unit.ratio, unit.seed
        unit_tasks = [by_name[d.name] for d in unit.datasets]
        # Bags sample each dataset; coarser granularities train each model on all of its datasets.
        bag_tasks = sample_tasks(unit_tasks, ratio / 100.0, seed, purpose="bag") if config.granularity == "bag" \
            else unit_tasks
        path = config.bag_dir(index)
        record_file = path / TRAINING_RECORD
        if record_file.exists():
            LOG.warning("bag %d already trained at %s; reusing it", index, path)
            seconds = json.loads(record_file.read_text())["train_seconds"]
            result.bags.append(BagResult(index, ratio, seed, path, seconds, reused=True))
        else:
            trained = train(config.train_config(index), bag_tasks, quiet=quiet)
            result.bags.append(BagResult(index, ratio, seed, path, trained.train_seconds))
        bag_records.append(
            {"index": index, "label": unit.label, "ratio": ratio, "seed": seed, "path": str(path),
             "weight": None if config.bag_weights is None else config.bag_weights[index],
             "data": describe_tasks(bag_tasks),
             "train_seconds": round(result.bags[-1].train_seconds, 2)}
        )

    # Under torchrun every rank trained the bags together; one process merges and writes, the others wait.
    if not is_main_process():
        barrier()
        return result
    started = time.perf_counter()
    settings = config.merge
    weights = config.bag_weights
    models, merge_weights = merge_inputs([str(b.path) for b in result.bags], weights, base)
    merged = merge_models(
        models,
        config.model_dir,
        method=settings.method,
        weights=merge_weights,
        base_model=base,
        parameters=settings.parameters or None,
        overwrite=True,
    )
    result.merge_seconds = time.perf_counter() - started
    write_lineage(
        config.model_dir,
        {
            "kind": "boom_train",
            "base_model": config.model,
            "backbone": config.model,
            "sampling": config.sampling,
            "granularity": config.granularity,
            "bags": bag_records,
            "merge": {"method": settings.method, "weights": weights, "base_model": base,
                      "relative_to_base": base is not None,
                      "parameters": settings.parameters, "mergekit_config": merged.mergekit_config},
            "training": config.training,
            "parents": [],
        },
    )
    _refresh_card(config.model_dir)
    if not config.keep_bags:
        shutil.rmtree(Path(config.output_dir) / "bags", ignore_errors=True)
    barrier()
    return result


def _refresh_card(model_dir: Path) -> None:
    """Append the lineage to the merged model's card (the bags' cards describe their own training)."""
    from embedkit.boom.lineage import read_lineage
    from embedkit.io import atomic_write

    lineage = read_lineage(model_dir)
    lines = [
        "---",
        "library_name: sentence-transformers",
        "tags: [sentence-transformers, embedkit, boom, merge]",
        "---",
        "",
        "# BOOM-merged embedder (embedkit)",
        "",
        "Merged with mergekit; the merge configuration is in `mergekit_config.yml`.",
        "",
        "## Lineage",
        "",
        "```json",
        json.dumps(lineage, indent=2),
        "```",
    ]
    with atomic_write(model_dir / "README.md") as handle:
        handle.write("\n".join(lines) + "\n")
