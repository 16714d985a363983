"""BOOM (Bagging-based rObust mOdel Merging): bagged training + merging, and incremental merge updates."""

from embedkit.boom.config import (
    DEFAULT_BAGS,
    DEFAULT_HISTORY_RATIO,
    BoomConfig,
    MergeSettings,
    load_boom_config,
)
from embedkit.boom.lineage import read_lineage
from embedkit.boom.sampling import sample_task, sample_tasks
from embedkit.boom.train import BoomResult, boom_train
from embedkit.boom.update import UpdateResult, boom_update

__all__ = [
    "DEFAULT_BAGS",
    "DEFAULT_HISTORY_RATIO",
    "BoomConfig",
    "BoomResult",
    "MergeSettings",
    "UpdateResult",
    "boom_train",
    "boom_update",
    "load_boom_config",
    "read_lineage",
    "sample_task",
    "sample_tasks",
]
