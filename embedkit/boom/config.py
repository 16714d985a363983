"""BOOM configuration (configs/boom.yaml): the bags, how they are merged, and the training settings.

Defaults from the BOOM release (inferred, not a published recipe): bags [80, 100] merged with
Multi-SLERP, per-dataset sampling without replacement, history subset 40% for updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedkit.config import load_yaml_mapping, validate_config
from embedkit.merging.methods import DEFAULT_MERGE_METHOD, get_merge_method
from embedkit.training.config import DatasetConfig, TrainConfig

DEFAULT_BAGS = (80.0, 100.0)  # inferred from the released models
DEFAULT_HISTORY_RATIO = 0.4  # inferred from the BOOM release
DEFAULT_SEED = 42


class MergeSettings(BaseModel):
    """How models are merged. `base_model` is only read by methods that need one (task_arithmetic,
    ties, dare_ties, slerp); it defaults to the training base model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = DEFAULT_MERGE_METHOD
    weights: list[float] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> MergeSettings:
        get_merge_method(self.method)
        return self


class BoomConfig(BaseModel):
    """`embedkit boom train --config configs/boom.yaml`.

    `bags`: sampling ratios in percent, one model per entry (e.g. [80, 100] or [60, 60, 60]).
    `seeds`: one per bag (default training.seed + bag index); recorded in the lineage.
    `training`: any `TrainConfig` option except model/output_dir/datasets/seed (strategy, loss, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    output_dir: str
    datasets: list[DatasetConfig] = Field(min_length=1)
    bags: list[float] = Field(default_factory=lambda: list(DEFAULT_BAGS), min_length=2)
    seeds: list[int] | None = None
    sampling: Literal["per_dataset_without_replacement"] = "per_dataset_without_replacement"
    merge: MergeSettings = MergeSettings()
    training: dict[str, Any] = Field(default_factory=dict)
    keep_bags: bool = True

    @model_validator(mode="after")
    def _check(self) -> BoomConfig:
        for ratio in self.bags:
            if not 0 < ratio <= 100:
                raise ValueError(f"bag ratios are percentages in (0, 100], got {ratio}")
        if self.seeds is not None and len(self.seeds) != len(self.bags):
            raise ValueError(f"{len(self.seeds)} seeds for {len(self.bags)} bags")
        reserved = {"model", "output_dir", "datasets", "seed"} & set(self.training)
        if reserved:
            raise ValueError(f"set {sorted(reserved)} at the top level (or `seeds`), not under training")
        self.train_config(0)  # validate the training options now, not after hours of work
        return self

    @property
    def bag_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [DEFAULT_SEED + i for i in range(len(self.bags))]

    def bag_dir(self, index: int) -> Path:
        return Path(self.output_dir) / "bags" / f"bag-{index}"

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"

    def train_config(self, index: int) -> TrainConfig:
        seeds = self.seeds if self.seeds is not None else [DEFAULT_SEED + i for i in range(len(self.bags))]
        return TrainConfig(
            model=self.model,
            output_dir=str(self.bag_dir(index)),
            datasets=self.datasets,
            seed=seeds[index],
            **self.training,
        )


def load_boom_config(path: str | Path, **overrides) -> BoomConfig:
    data = load_yaml_mapping(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(BoomConfig, data, path=path)
