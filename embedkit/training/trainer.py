"""Multi-task training with the sentence-transformers Trainer (multi-GPU through accelerate/torchrun).

Scheduling strategies:
- `batch_shuffle`: every batch comes from one task; the order of batches across tasks is shuffled
  (sentence-transformers' proportional multi-dataset sampler). The paper's strongest in-domain setting.
- `mixed`: tasks pooled; a batch mixes tasks. Tasks with different hard-negative counts are pooled per
  count (`mixed_negatives: group`, batches never mix counts) or all given the largest count with the
  missing ones filled from the task's other passages (`pad`); no task loses its negatives.
- `sequential`: one task after the other (`sequential_order`: given, reversed, by_task_type).
- `two_stage`: stage-1 tasks first, then stage-2 tasks (each stage batch-shuffled).

Training needs a base model and the data files the config names, so the example is not run here:

>>> from embedkit.training import load_train_config, train
>>> result = train(load_train_config("configs/train_multitask.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, atomic_write
from embedkit.training.config import TrainConfig
from embedkit.training.data import TaskData, load_tasks, task_negative_count, to_dataset
from embedkit.training.distributed import barrier, is_main_process

LOG = logging.getLogger(__name__)

TRAINING_RECORD = "embedkit_training.json"
STAGE_DONE = "DONE"


@dataclass(frozen=True)
class Stage:
    name: str
    tasks: tuple[TaskData, ...]
    pooled: bool  # True: one mixed dataset; False: one dataset per task (batch-level shuffling)


@dataclass
class TrainResult:
    output_dir: Path
    train_seconds: float
    steps: int
    rows: dict[str, int]
    lora: bool
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


def plan_stages(config: TrainConfig, tasks: Sequence[TaskData]) -> list[Stage]:
    if config.strategy == "batch_shuffle":
        return [Stage("all", tuple(tasks), pooled=False)]
    if config.strategy == "mixed":
        return [Stage("all", tuple(tasks), pooled=True)]
    if config.strategy == "sequential":
        return [Stage(t.name, (t,), pooled=False) for t in sequential_order(config, tasks)]
    return [
        Stage(f"stage{n}", tuple(t for t in tasks if t.config.stage == n), pooled=False) for n in (1, 2)
    ]


def sequential_order(config: TrainConfig, tasks: Sequence[TaskData]) -> list[TaskData]:
    """Tasks in the order the `sequential` strategy trains them."""
    tasks = list(tasks)
    if config.sequential_order == "reversed":
        return tasks[::-1]
    if config.sequential_order == "by_task_type":
        types = list(config.task_type_order or dict.fromkeys(t.config.task_type for t in tasks))
        return sorted(tasks, key=lambda t: types.index(t.config.task_type))  # stable within a type
    return tasks


def stage_dataset(stage: Stage, config: TrainConfig):
    """The dataset(s) for one stage: a DatasetDict (one entry per task, or per hard-negative count for
    a pooled stage with `mixed_negatives: group`) or one pooled Dataset."""
    from datasets import DatasetDict, concatenate_datasets

    counts = {t.name: task_negative_count(t, config.hard_negatives) for t in stage.tasks}
    if stage.pooled:
        def pooled(tasks: Sequence[TaskData], k: int):
            parts = [to_dataset(t, negatives=k, template=config.instruction_template, seed=config.seed) for t in tasks]
            return concatenate_datasets(parts).shuffle(seed=config.seed)

        if config.mixed_negatives == "pad" or len(set(counts.values())) == 1:
            return pooled(stage.tasks, max(counts.values()))
        by_count: dict[int, list[TaskData]] = {}
        for task in stage.tasks:
            by_count.setdefault(counts[task.name], []).append(task)
        return DatasetDict({f"negatives_{k}": pooled(group, k) for k, group in sorted(by_count.items())})
    return DatasetDict(
        {
            t.name: to_dataset(t, negatives=counts[t.name], template=config.instruction_template, seed=config.seed)
            for t in stage.tasks
        }
    )


def train(config: TrainConfig, tasks: Sequence[TaskData] | None = None, *, quiet: bool = False) -> TrainResult:
    """Train as configured and save a complete sentence-transformers model to `config.output_dir`.

    `tasks` lets callers pass already-loaded (e.g. sampled) data; by default the config's datasets are read.
    Stages finished before an interruption are skipped on a rerun, and an unfinished stage resumes from
    its newest checkpoint (`resume: true`).
    """
    import torch

    from embedkit.training.modeling import (
        add_lora,
        build_model,
        count_parameters,
        lora_decision,
        lora_wanted,
        merge_lora,
        weights_dtype,
    )

    tasks = list(tasks) if tasks is not None else load_tasks(config.datasets)
    output = Path(config.output_dir)
    if output.exists() and any(output.iterdir()):
        raise EmbedkitError(f"output folder {output} exists and is not empty; choose another output_dir")
    device = None if config.device == "auto" else config.device
    use_lora = lora_decision(config)
    model = build_model(config, device=device, lora=use_lora)  # first: a model that cannot load leaves no folder
    checkpoints = config.checkpoint_path
    checkpoints.mkdir(parents=True, exist_ok=True)
    if use_lora is None:  # `auto`: decided by the loaded model's size
        use_lora = lora_wanted(config.lora, count_parameters(model))
        weights_dtype(config, use_lora)  # a half-precision load is only allowed with LoRA
    stages = plan_stages(config, tasks)

    started = time.perf_counter()
    steps = 0
    rows: dict[str, int] = {}
    for index, stage in enumerate(stages):
        stage_dir = checkpoints / f"stage-{index}-{stage.name}"
        final = stage_dir / "final"
        dataset = stage_dataset(stage, config)
        for name, part in (dataset.items() if hasattr(dataset, "items") else [(stage.name, dataset)]):
            rows[name] = rows.get(name, 0) + len(part)
        if (stage_dir / STAGE_DONE).exists():
            LOG.info("stage %s already trained; loading it", stage.name)
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(final), device=device)
            steps += json.loads((stage_dir / STAGE_DONE).read_text()).get("steps", 0)
            continue
        if use_lora:
            add_lora(model, config.lora)
        steps += _run_stage(model, dataset, config, stage_dir, quiet=quiet)
        merge_lora(model)
        if len(stages) > 1 and is_main_process():
            model.save(str(final), create_model_card=False)
            (stage_dir / STAGE_DONE).write_text(json.dumps({"steps": steps}))
        barrier()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    train_seconds = time.perf_counter() - started

    result = TrainResult(output_dir=output, train_seconds=train_seconds, steps=steps, rows=rows, lora=use_lora)
    if not is_main_process():  # under torchrun every rank trains; only rank 0 writes the model
        barrier()
        return result
    _save(model, config, tasks, result)
    if config.evaluation:
        from embedkit.training.evaluation import evaluate_suite

        # The saved model carries one prompt per instructed task; evaluation reads them by dataset name.
        suite = evaluate_suite(str(output), config.evaluation, split=config.evaluation_split, quiet=quiet,
                               query_prompts=config.evaluation_prompts)
        result.evaluation = suite.metrics
        from embedkit.training.card import write_model_card

        write_model_card(output, config=config, tasks=tasks, result=result)
    if not config.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    barrier()
    return result


def _run_stage(model, dataset, config: TrainConfig, stage_dir: Path, *, quiet: bool) -> int:
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        MultiDatasetBatchSamplers,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from embedkit.training.losses import build_loss

    cuda = torch.cuda.is_available() and config.device != "cpu"
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(stage_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=config.gradient_checkpointing,
        # In-batch negatives must not contain a copy of the anchor's own positive.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to="none",
        disable_tqdm=quiet,
        use_cpu=config.device == "cpu",
    )
    loss = build_loss(model, config)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    last = get_last_checkpoint(str(stage_dir)) if config.resume and stage_dir.is_dir() else None
    if last:
        LOG.warning("resuming from %s", last)
    output = trainer.train(resume_from_checkpoint=last)
    return int(output.global_step)


def _save(model, config: TrainConfig, tasks: Sequence[TaskData], result: TrainResult) -> None:
    from embedkit.training.card import training_record, write_model_card

    prompts = dict(model.prompts or {})
    for task in tasks:
        if task.config.instruction:
            # Saved prompts let users encode with prompt_name=<task>; they survive merges.
            prompts[task.name] = config.instruction_template.format(instruction=task.config.instruction)
    model.prompts = prompts
    with atomic_directory(result.output_dir, overwrite=True, marker="modules.json", what="model") as tmp:
        model.save(str(tmp), create_model_card=False)
        with atomic_write(tmp / TRAINING_RECORD) as handle:
            json.dump(training_record(config, tasks, result), handle, indent=2)
        write_model_card(tmp, config=config, tasks=tasks, result=result)
