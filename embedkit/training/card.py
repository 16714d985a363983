"""Model card and machine-readable training record: data, hyper-parameters, evaluation results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from embedkit.io import atomic_write

LINEAGE_FILE = "embedkit_lineage.json"


def training_record(config, tasks: Sequence, result) -> dict[str, Any]:
    return {
        "base_model": config.model,
        "strategy": config.strategy,
        "loss": config.loss,
        "lora": result.lora,
        "train_seconds": round(result.train_seconds, 2),
        "steps": result.steps,
        "datasets": [
            {
                "name": t.name,
                "path": t.config.path,
                "format": t.config.format,
                "weight": t.config.weight,
                "instruction": t.config.instruction,
                "groups": len(t.groups),
                "source_groups": t.source_rows,
                "sampling": t.sampled_from,
                "rows": result.rows.get(t.name),
            }
            for t in tasks
        ],
        "config": config.model_dump(mode="json"),
        "evaluation": result.evaluation,
    }


def write_model_card(folder: str | Path, *, config, tasks: Sequence, result) -> Path:
    """README.md with the data, hyper-parameters and (when run) evaluation results of a training run."""
    folder = Path(folder)
    record = training_record(config, tasks, result)
    lines = [
        "---",
        "library_name: sentence-transformers",
        "tags: [sentence-transformers, embedkit]",
        f"base_model: {config.model}",
        "---",
        "",
        f"# Embedder trained with embedkit ({config.strategy})",
        "",
        f"Base model `{config.model}`, loss `{config.loss}`, {record['steps']} steps in "
        f"{record['train_seconds']:.0f} s{' with LoRA' if result.lora else ''}.",
        "",
        "## Training data",
        "",
        "| dataset | path | weight | instruction | query groups (used/source) | rows | sampling |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in record["datasets"]:
        sampling = json.dumps(entry["sampling"]) if entry["sampling"] else ""
        lines.append(
            f"| {entry['name']} | `{entry['path']}` | {entry['weight']} | {entry['instruction'] or ''} | "
            f"{entry['groups']}/{entry['source_groups']} | {entry['rows']} | {sampling} |"
        )
    lines += ["", "## Hyper-parameters", "", "```yaml", yaml.safe_dump(record["config"], sort_keys=False).strip(), "```"]
    if result.evaluation:
        lines += ["", "## Evaluation (nDCG@10)", "", "| dataset | nDCG@10 | Recall@100 |", "|---|---|---|"]
        for name, metrics in result.evaluation.items():
            lines.append(f"| {name} | {metrics.get('nDCG@10', float('nan')):.4f} | {metrics.get('Recall@100', float('nan')):.4f} |")
    lineage = folder / LINEAGE_FILE
    if lineage.exists():
        lines += ["", "## Lineage", "", "```json", lineage.read_text(encoding="utf-8").strip(), "```"]
    path = folder / "README.md"
    with atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")
    return path
