"""Evaluate one model on a suite of BEIR-format datasets and print nDCG@10 per dataset as a table.

The example needs a model and data files, so it is not run here:

>>> from embedkit.training.evaluation import evaluate_suite
>>> suite = evaluate_suite("runs/boom/model", ["../shared/data/scifact", "../shared/data/cisi"])  # doctest: +SKIP
>>> print(suite.table())  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.errors import EmbedkitError


@dataclass
class SuiteResult:
    model: str
    split: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset name -> metrics
    seconds: dict[str, float] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # dataset name -> query prompt used

    def mean(self, metric: str = "nDCG@10", names: Sequence[str] | None = None) -> float:
        names = list(names or self.metrics)
        return sum(self.metrics[n][metric] for n in names) / len(names)

    def table(self, metrics: Sequence[str] = ("nDCG@10", "Recall@100")) -> str:
        header = "| dataset | " + " | ".join(metrics) + " |"
        lines = [header, "|---|" + "---|" * len(metrics)]
        for name, values in self.metrics.items():
            lines.append(f"| {name} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in metrics) + " |")
        if len(self.metrics) > 1:
            lines.append("| **mean** | " + " | ".join(f"{self.mean(m):.4f}" for m in metrics) + " |")
        return "\n".join(lines)


def dataset_label(path: str | Path) -> str:
    path = Path(path)
    return path.parent.name if path.name == "beir" else path.name


def evaluate_suite(
    model: str,
    datasets: Sequence[str | Path],
    *,
    split: str = "test",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    device: str = "auto",
    index_dir: str | Path | None = None,
    quiet: bool = False,
    query_prompts: dict[str, str] | None = None,
    use_saved_prompts: bool = True,
) -> SuiteResult:
    """Encode, index (exact inner product) and evaluate `model` on each dataset; one model load for all.

    Queries are encoded with the prompt the model was trained with for that dataset: `query_prompts`
    (dataset name -> prompt text) first, else the prompt saved in the model under the dataset's name
    (embedkit training saves one per task with an instruction), else the model's "query" prompt.
    Indexes go to a temporary folder unless `index_dir` is given (then they are kept and reused).
    """
    import time

    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.pipelines.beir import run_beir

    if not datasets:
        raise EmbedkitError("no datasets to evaluate")
    config = EncoderConfig(model=model, batch_size=batch_size, max_length=max_length, device=device)
    encoder = Encoder(config)
    default_prefix = encoder.query_prefix
    saved = dict(getattr(encoder.model, "prompts", None) or {}) if use_saved_prompts else {}
    result = SuiteResult(model=model, split=split)
    with tempfile.TemporaryDirectory(prefix="embedkit-suite-") as tmp:
        root = Path(index_dir) if index_dir else Path(tmp)
        for dataset in datasets:
            label = dataset_label(dataset)
            if label in result.metrics:
                label = str(dataset)
            encoder.query_prefix = dataset_prompt(label, query_prompts or {}, saved, default_prefix)
            result.prompts[label] = encoder.query_prefix
            started = time.perf_counter()
            beir = run_beir(dataset, config, split=split, encoder=encoder, index_path=root / label, quiet=quiet, rebuild=index_dir is None)
            result.metrics[label] = beir.metrics
            result.seconds[label] = time.perf_counter() - started
    return result


def dataset_prompt(label: str, explicit: dict[str, str], saved: dict[str, str], default: str) -> str:
    """The query prompt for one dataset: explicit, else the model's prompt named like it, else default."""
    if label in explicit:
        return explicit[label]
    return saved.get(label) or default
