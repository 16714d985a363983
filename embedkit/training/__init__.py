"""Multi-task embedder training on sentence-transformers: YAML configs, scheduling strategies, losses,
pooling for encoders and decoders, optional LoRA, resumable runs and a model card."""

from embedkit.training.config import DatasetConfig, LoraSettings, TrainConfig, load_train_config
from embedkit.training.data import QueryGroup, TaskData, load_task, load_tasks, write_jsonl
from embedkit.training.losses import LOSSES, register_loss
from embedkit.training.trainer import TrainResult, train

__all__ = [
    "LOSSES",
    "DatasetConfig",
    "LoraSettings",
    "QueryGroup",
    "TaskData",
    "TrainConfig",
    "TrainResult",
    "load_task",
    "load_tasks",
    "load_train_config",
    "register_loss",
    "train",
    "write_jsonl",
]
