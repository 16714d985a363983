"""Evaluate a model folder on MTEB tasks through the `mteb` package (task types beyond BEIR retrieval:
STS, classification, clustering, pair classification, reranking, …), results as one JSON file.

Tasks are named as mteb names them (`STSBenchmark`, `Banking77Classification`; mteb downloads their data
from the hub) or as `MODULE:CLASS`, an `mteb` task class importable from the Python path — the way to run a
task on local data (subclass an `AbsTask*`, give it `metadata` and a `load_data` that fills `self.dataset`).

The example needs a model and the tasks' data, so it is not run here:

>>> from embedkit.mteb_eval import evaluate_mteb
>>> evaluate_mteb("runs/boom/model", ["STSBenchmark"], output="runs/boom/mteb.json")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError


def _mteb():
    try:
        import mteb
    except ImportError:
        raise EmbedkitError("evaluating on MTEB tasks needs the mteb package: pip install 'mteb>=2.0.1'") from None
    return mteb


def resolve_tasks(names: Sequence[str]) -> list[Any]:
    """mteb task objects for `names` (mteb task names or `MODULE:CLASS`), in the order given."""
    mteb = _mteb()
    from mteb.abstasks.abstask import AbsTask

    tasks = []
    for name in names:
        if ":" in name:
            module_name, _, class_name = name.partition(":")
            try:
                task_class = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:
                raise EmbedkitError(f"cannot import the task {name}: {error}") from None
            if not (isinstance(task_class, type) and issubclass(task_class, AbsTask)):
                raise EmbedkitError(f"{name} is not an mteb task class (a subclass of mteb's AbsTask)")
            tasks.append(task_class())
        else:
            try:
                tasks.extend(mteb.get_tasks(tasks=[name]))
            except (KeyError, ValueError) as error:
                raise EmbedkitError(f"unknown mteb task {name!r}: {error}") from None
    return tasks


def evaluate_mteb(model: str, task_names: Sequence[str], *, output: str | Path | None = None,
                  batch_size: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Run `task_names` on the sentence-transformers model at `model`; returns (and writes to `output`)
    {"model", "mteb_version", "tasks": [{"task", "type", "main_score_name", "main_score", "scores"}]}."""
    import json

    from sentence_transformers import SentenceTransformer

    from embedkit.encoding.models import resolve_model
    from embedkit.io import atomic_write

    mteb = _mteb()
    if not task_names:
        raise EmbedkitError("name at least one mteb task")
    tasks = resolve_tasks(task_names)
    encoder = SentenceTransformer(resolve_model(model), device=device)
    encode_kwargs = {"batch_size": batch_size} if batch_size else None
    try:
        # cache=None: results come back here and go where --output says, not into ~/.cache/mteb.
        results = mteb.evaluate(encoder, tasks, cache=None, overwrite_strategy="always", show_progress_bar=False,
                                encode_kwargs=encode_kwargs)
    except Exception as error:  # noqa: BLE001 - data download or task failures are reported, not traced
        raise EmbedkitError(f"mteb evaluation failed: {type(error).__name__}: {error}") from None
    by_name = {task.metadata.name: task for task in tasks}
    summary = {
        "model": str(model),
        "mteb_version": getattr(mteb, "__version__", "unknown"),
        "tasks": [
            {"task": result.task_name,
             "type": by_name[result.task_name].metadata.type if result.task_name in by_name else None,
             "main_score_name": by_name[result.task_name].metadata.main_score if result.task_name in by_name else None,
             "main_score": result.get_score(),
             "scores": result.scores}
            for result in results.task_results
        ],
    }
    if output is not None:
        with atomic_write(output) as handle:
            json.dump(summary, handle, indent=2, default=str)
    return summary
