"""Train the Agentic-R retriever on utility-labelled pairs, and re-index the corpus with it.

InfoNCE over the query's positive, its hard negatives and every other passage in the batch
(sentence-transformers `MultipleNegativesRankingLoss` with scale = 1 / temperature = 100), trained with
`SentenceTransformerTrainer`; each round starts again from `base_model`. Launched with torchrun or
`accelerate launch`, the batch's passages are gathered from every process (upstream: 8 GPUs × 32 queries ×
16 passages), so `batch_size` is per process.

    model_dir = train_retriever(read_pairs("pairs.jsonl"), RetrieverTrainConfig(), "runs/r1/retriever")
    reindex("corpus.jsonl", model_dir, "runs/r1/index", RetrieverTrainConfig())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from agents.agentic_r.config import RetrieverTrainConfig
from agents.agentic_r.pairs import TrainingPair
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, check_replaceable

log = logging.getLogger(__name__)
#: Written into every retriever output folder (beside `model/`): the proof that `--overwrite` may replace it.
TRAIN_METRICS = "train_metrics.json"


def pair_rows(pairs: Sequence[TrainingPair], hard_negatives: int) -> dict[str, list[str]]:
    """Columns anchor, positive, negative_1 … negative_n (n = `hard_negatives`): one row per positive, holding
    its pair's first n negatives (pairs keep them in utility order, hardest first).

    Every pair must have at least n negatives (`agentic-r label` skips steps with fewer than
    `label.negatives`); a pair with fewer is an error rather than a reason to cut every row.
    """
    if not pairs:
        raise EmbedkitError("no training pairs: every step was skipped (see the labelling statistics)")
    short = [p for p in pairs if len(p.negatives) < hard_negatives]
    if short:
        raise EmbedkitError(
            f"{len(short)} training pairs have fewer than {hard_negatives} negatives (e.g. '{short[0].qid}' turn "
            f"{short[0].turn} has {len(short[0].negatives)}): label with label.negatives >= {hard_negatives} "
            f"or train with hard_negatives <= {min(len(p.negatives) for p in short)}"
        )  # fmt: skip
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(hard_negatives)})
    for pair in pairs:
        for positive in pair.positives:
            columns["anchor"].append(pair.query)
            columns["positive"].append(positive.joined())
            for i in range(hard_negatives):
                columns[f"negative_{i + 1}"].append(pair.negatives[i].joined())
    return columns


def make_loss(model, config: RetrieverTrainConfig):
    """InfoNCE at τ = `config.temperature` over each query's positive, its hard negatives and every other
    passage of the batch — of every process's batch under torchrun/accelerate when `gather_across_devices`
    (the gathered passages keep their gradient on the process that encoded them)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model, scale=1.0 / config.temperature,
                                        gather_across_devices=config.gather_across_devices)  # fmt: skip


def train_retriever(pairs: Sequence[TrainingPair], config: RetrieverTrainConfig, out: str | Path,
                    *, overwrite: bool = False, quiet: bool = True) -> Path:  # fmt: skip
    """Fine-tune `config.base_model` on `pairs`; the sentence-transformers model folder is written atomically
    at `out`, with the query/passage prefixes saved as its prompts (so `Encoder` applies them)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from embedkit.encoding import load_sentence_transformer

    out = Path(out)
    check_replaceable(out, overwrite=overwrite, marker=TRAIN_METRICS, what="retriever output")  # before training
    columns = pair_rows(pairs, config.hard_negatives)
    dataset = Dataset.from_dict(columns)
    torch.manual_seed(config.seed)
    model = load_sentence_transformer(config.base_model, device="cuda" if torch.cuda.is_available() else "cpu")
    saved_length = model.max_seq_length
    if config.max_length is not None:  # a training-time cut only; the saved model keeps the base's limit
        model.max_seq_length = config.max_length
    loss = make_loss(model, config)
    prompts = {"anchor": config.query_prefix, "positive": config.passage_prefix}
    prompts.update({name: config.passage_prefix for name in columns if name.startswith("negative_")})
    with atomic_directory(out, overwrite=overwrite, marker=TRAIN_METRICS, what="retriever output") as folder:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(folder / "trainer"),
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
            seed=config.seed,
            # Duplicated texts in a batch would be scored as negatives of themselves.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            prompts={k: v for k, v in prompts.items() if v} or None,
            save_strategy="no",
            report_to="none",
            logging_steps=10,
            disable_tqdm=quiet,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
        result = trainer.train()
        log.info("retriever training: %s", result.metrics)
        model.max_seq_length = saved_length
        model.prompts = {k: v for k, v in {"query": config.query_prefix, "document": config.passage_prefix}.items() if v}
        model.save(str(folder / "model"))
        (folder / TRAIN_METRICS).write_text(_json({"rows": len(dataset), **result.metrics}), encoding="utf-8")
        import shutil

        shutil.rmtree(folder / "trainer", ignore_errors=True)
    return out / "model"


def reindex(corpus: str | Path, model_dir: str | Path, out: str | Path, config: RetrieverTrainConfig,
            *, overwrite: bool = False, quiet: bool = True) -> Path:  # fmt: skip
    """Encode `corpus` with the trained retriever into a dense index at `out`."""
    from embedkit.data import count_documents, iter_documents
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import build_dense_index

    encoder = Encoder(EncoderConfig(model=str(model_dir), batch_size=config.encode_batch_size))
    total = count_documents(corpus)
    return build_dense_index(iter_documents(corpus), encoder, out, overwrite=overwrite, quiet=quiet, total=total,
                             corpus=str(corpus))  # fmt: skip


def _json(data: dict) -> str:
    import json

    return json.dumps(data, indent=2, default=float)
