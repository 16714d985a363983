"""Per-dataset sampling without replacement: the bags of BOOM and the history subset of updates."""

from __future__ import annotations

import random
from collections.abc import Sequence

from embedkit.errors import EmbedkitError
from embedkit.training.data import TaskData


def sample_task(task: TaskData, fraction: float, seed: int, *, purpose: str = "bag") -> TaskData:
    """Keep round(fraction × groups) query groups of one task, drawn without replacement.

    Each dataset is sampled on its own (so every task keeps its share); the draw depends only on the
    seed and the dataset name, so a recorded seed reproduces the bag.
    """
    if not 0 < fraction <= 1:
        raise EmbedkitError(f"sampling fraction must be in (0, 1], got {fraction}")
    groups = list(task.groups)
    count = max(1, round(fraction * len(groups)))
    rng = random.Random(f"{purpose}-{seed}-{task.name}")
    chosen = sorted(rng.sample(range(len(groups)), count))  # source order; the trainer shuffles
    return task.with_groups(
        [groups[i] for i in chosen],
        **{f"{purpose}_fraction": fraction, f"{purpose}_seed": seed, f"{purpose}_groups": count, "of": len(groups)},
    )


def sample_tasks(tasks: Sequence[TaskData], fraction: float, seed: int, *, purpose: str = "bag") -> list[TaskData]:
    return [sample_task(t, fraction, seed, purpose=purpose) for t in tasks]
