"""BOOM (Bagging-based rObust mOdel Merging): bagged training + merging, and incremental merge updates."""

from embedkit.boom.config import (
    DEFAULT_BAGS,
    DEFAULT_HISTORY_RATIO,
    DEFAULT_UPDATE_WEIGHT,
    BagSettings,
    BoomConfig,
    MergeSettings,
    UpdateSettings,
    load_boom_config,
)
from embedkit.boom.lineage import read_lineage
from embedkit.boom.sampling import sample_task, sample_tasks
from embedkit.boom.train import BoomResult, boom_train
from embedkit.boom.update import UpdatePlan, UpdateResult, boom_update, merge_update, update_merge_plan

__all__ = [
    "DEFAULT_BAGS",
    "DEFAULT_HISTORY_RATIO",
    "DEFAULT_UPDATE_WEIGHT",
    "BagSettings",
    "BoomConfig",
    "BoomResult",
    "MergeSettings",
    "UpdatePlan",
    "UpdateResult",
    "UpdateSettings",
    "boom_train",
    "boom_update",
    "load_boom_config",
    "merge_update",
    "read_lineage",
    "sample_task",
    "sample_tasks",
    "update_merge_plan",
]
