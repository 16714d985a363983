"""BOOM configuration (configs/boom.yaml): the bags, how they are merged, and the training settings.

Defaults from the BOOM release (inferred, not a published recipe): bags [80, 100] merged with
Multi-SLERP, per-dataset sampling without replacement, history subset 40% for updates.

The merge recipe is data: every bag states its sampling ratio, seed and merge weight, and the merge
states whether it works on the models themselves or on task vectors relative to a base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from embedkit.config import YamlConfig
from embedkit.merging.methods import DEFAULT_MERGE_METHOD, get_merge_method
from embedkit.training.config import DatasetConfig, TrainConfig

DEFAULT_BAGS = (80.0, 100.0)  # inferred from the released models
DEFAULT_HISTORY_RATIO = 0.4  # inferred from the BOOM release
DEFAULT_SEED = 42
#: Weight of the update model in an incremental update; the current model gets 1 - this. With the
#: default the update moves the model halfway towards the update model (as in the BOOM release).
DEFAULT_UPDATE_WEIGHT = 0.5


class MergeSettings(YamlConfig):
    """How models are merged.

    `base_model`: the model task vectors are taken relative to. Methods that need one (task_arithmetic,
    ties, dare_ties) default to the training base; multislerp uses one only when `base_model` is set or
    `relative_to_base: true` (then the training base); methods that cannot take one (linear) refuse it.
    slerp's "base" is the first of its two models.
    """

    method: str = DEFAULT_MERGE_METHOD
    weights: list[float] | None = None
    base_model: str | None = None
    relative_to_base: bool = Field(False, description="multislerp on task vectors relative to the training base")
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> MergeSettings:
        method = get_merge_method(self.method)
        wants_base = self.base_model is not None or self.relative_to_base
        if wants_base and not (method.needs_base or method.accepts_base):
            raise ValueError(f"merge method '{self.method}' does not take a base model; remove base_model/"
                             "relative_to_base or pick multislerp, task_arithmetic, ties or dare_ties")
        return self


class BagSettings(YamlConfig):
    """One bag: the percentage of each dataset it samples, its seed, and its weight in the merge."""

    ratio: float = Field(gt=0, le=100, description="percent of each dataset's query groups")
    seed: int | None = None
    weight: float | None = Field(None, ge=0, description="merge weight (default: 1.0, i.e. equal weights)")


class UpdateSettings(YamlConfig):
    """How an incremental update is trained and merged (`embedkit boom update`).

    `weight`: the update model's weight w in the merge; the current model gets 1 - w. With `linear`
    the result is exactly (1 - w)·current + w·update per tensor. `merge_base` (task_arithmetic, ties,
    dare_ties, and multislerp on task vectors): "backbone" = the original base model from the lineage
    (so merged = backbone + (1-w)·(current - backbone) + w·(update - backbone)), "current" = the current
    model, or a path. `init`: the update model starts from the current model (default) or from the
    original backbone.
    """

    weight: float = Field(DEFAULT_UPDATE_WEIGHT, gt=0, le=1)
    merge_base: str = "backbone"
    init: Literal["current", "backbone"] = "current"
    history_ratio: float = Field(DEFAULT_HISTORY_RATIO, ge=0, le=1)


GRANULARITIES = ("bag", "dataset", "task_type")


@dataclass(frozen=True)
class TrainingUnit:
    """One model the run trains before the merge: a bag of every dataset, or one dataset / task type in full."""

    index: int
    label: str
    ratio: float
    seed: int
    datasets: tuple[DatasetConfig, ...]


class BoomConfig(YamlConfig):
    """`embedkit boom train --config configs/boom.yaml`.

    `bags`: one model per entry, a percentage (`[80, 100]`) or a mapping (`{ratio: 80, weight: 0.6,
    seed: 7}`). `seeds`: one per bag (default training.seed + bag index); recorded in the lineage.
    `training`: any `TrainConfig` option except model/output_dir/datasets/seed (strategy, loss, ...).
    `granularity`: what one merged model is trained on, to compare merging granularities as the paper does:
    `bag` (BOOM: every model sees a sample of every dataset), `dataset` (one model per dataset, all of it)
    or `task_type` (one model per `task_type`, all of its datasets). With `dataset`/`task_type` the models
    are merged the same way (merge section, one weight and seed per model) and `bags` does not apply.
    """

    model: str
    output_dir: str
    datasets: list[DatasetConfig] = Field(min_length=1)
    bags: list[BagSettings] = Field(default_factory=lambda: [BagSettings(ratio=r) for r in DEFAULT_BAGS],
                                    min_length=2)
    seeds: list[int] | None = None
    sampling: Literal["per_dataset_without_replacement"] = "per_dataset_without_replacement"
    merge: MergeSettings = MergeSettings()
    update: UpdateSettings = UpdateSettings()
    training: dict[str, Any] = Field(default_factory=dict)
    keep_bags: bool = True
    granularity: Literal["bag", "dataset", "task_type"] = "bag"

    @model_validator(mode="before")
    @classmethod
    def _bag_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("bags"), list):
            data = {**data, "bags": [{"ratio": b} if isinstance(b, (int, float)) else b for b in data["bags"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> BoomConfig:
        if self.granularity != "bag":
            if "bags" in self.model_fields_set:
                raise ValueError(f"granularity: {self.granularity} trains one model per {self.granularity} on all "
                                 "of its data; `bags` applies to granularity: bag only")
            if self.granularity == "task_type":
                missing = [d.name for d in self.datasets if d.task_type is None]
                if missing:
                    raise ValueError(f"granularity: task_type needs task_type on every dataset; missing on {missing}")
            prompted = [d.name for d in self.datasets if d.instruction]
            if prompted:  # each model would save only its own datasets' prompts, and the merge refuses that
                raise ValueError(f"granularity: {self.granularity} with instructions ({prompted}): each model "
                                 "saves the prompts of its own datasets only, so the models could not be merged; "
                                 "drop the instructions or use granularity: bag")
            if len(self._groups()) < 2:
                raise ValueError(f"granularity: {self.granularity} gives {len(self._groups())} model; merging "
                                 "needs at least 2")
        count, what = self.model_count, "bags" if self.granularity == "bag" else f"{self.granularity} models"
        if self.seeds is not None and len(self.seeds) != count:
            raise ValueError(f"{len(self.seeds)} seeds for {count} {what}")
        if self.seeds is not None and any(b.seed is not None for b in self.bags):
            raise ValueError("give seeds either in `seeds` or per bag, not both")
        if self.merge.weights is not None:
            if any(b.weight is not None for b in self.bags):
                raise ValueError("give merge weights either in merge.weights or per bag, not both")
            if len(self.merge.weights) != count:
                raise ValueError(f"{len(self.merge.weights)} merge weights for {count} {what}")
        reserved = {"model", "output_dir", "datasets", "seed"} & set(self.training)
        if reserved:
            raise ValueError(f"set {sorted(reserved)} at the top level (or `seeds`), not under training")
        self.train_config(0)  # validate the training options now, not after hours of work
        return self

    def _groups(self) -> list[tuple[str, tuple[DatasetConfig, ...]]]:
        """(label, datasets) of each model at this granularity (config order)."""
        if self.granularity == "bag":
            return [(f"bag-{i}", tuple(self.datasets)) for i in range(len(self.bags))]
        if self.granularity == "dataset":
            return [(d.name, (d,)) for d in self.datasets]
        types = list(dict.fromkeys(d.task_type for d in self.datasets))
        return [(str(t), tuple(d for d in self.datasets if d.task_type == t)) for t in types]

    @property
    def model_count(self) -> int:
        return len(self._groups())

    @property
    def units(self) -> list[TrainingUnit]:
        """The models trained before the merge, in merge order."""
        ratios = self.ratios if self.granularity == "bag" else [100.0] * self.model_count
        return [TrainingUnit(i, label, ratio, seed, datasets) for i, ((label, datasets), ratio, seed)
                in enumerate(zip(self._groups(), ratios, self.bag_seeds, strict=True))]

    @property
    def ratios(self) -> list[float]:
        return [b.ratio for b in self.bags]

    @property
    def bag_seeds(self) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        if self.granularity != "bag":
            return [DEFAULT_SEED + i for i in range(self.model_count)]
        return [b.seed if b.seed is not None else DEFAULT_SEED + i for i, b in enumerate(self.bags)]

    @property
    def bag_weights(self) -> list[float] | None:
        """Merge weights, one per trained model; None when every one has the default (equal weights)."""
        if self.merge.weights is not None:
            return list(self.merge.weights)
        if self.granularity != "bag" or all(b.weight is None for b in self.bags):
            return None
        return [1.0 if b.weight is None else b.weight for b in self.bags]

    def bag_dir(self, index: int) -> Path:
        return Path(self.output_dir) / "bags" / f"bag-{index}"

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"

    def train_config(self, index: int) -> TrainConfig:
        return TrainConfig(
            model=self.model,
            output_dir=str(self.bag_dir(index)),
            datasets=list(self.units[index].datasets),
            seed=self.bag_seeds[index],
            **self.training,
        )


def load_boom_config(path: str | Path, overrides: dict[str, Any] | None = None, **top_level) -> BoomConfig:
    """Read a BOOM YAML; `overrides` holds dotted keys (`--set merge.method=linear`), keyword arguments
    top-level keys given as CLI flags (None = not given). The same as `BoomConfig.from_yaml` with both merged."""
    flags = {k: v for k, v in top_level.items() if v is not None}
    return BoomConfig.from_yaml(path, overrides={**flags, **(overrides or {})})
