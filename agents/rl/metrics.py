"""Per-step metrics: a jsonl log, a CSV mirror, and learning-curve plots (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from embedkit.errors import DataFormatError
from embedkit.io import atomic_write


class MetricsLogger:
    """Appends one JSON line per step to `metrics.jsonl` and rewrites `metrics.csv` from it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "metrics.csv"
        self.records = read_metrics(self.jsonl) if self.jsonl.exists() else []

    def truncate(self, last_step: int) -> None:
        """Drop records after `last_step` (a resumed run repeats the steps after its checkpoint)."""
        self.records = [r for r in self.records if r.get("step", 0) <= last_step]
        with atomic_write(self.jsonl) as handle:
            for record in self.records:
                handle.write(json.dumps(record) + "\n")
        self._write_csv()

    def log(self, record: dict) -> None:
        self.records.append(record)
        with open(self.jsonl, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for record in self.records:
            keys += [k for k in record if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.records)
        with atomic_write(self.csv) as handle:
            handle.write(buffer.getvalue())


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl (or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise DataFormatError("no metrics.jsonl here: is this an `embedkit rl train` output folder?", path=path)
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"invalid JSON: {error.msg}", path=path, line=line_no) from None
    return records


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_runs(runs: dict[str, list[dict]], out: str | Path, *, keys: Sequence[str] = ("reward_mean",),
              window: int = 1, dpi: int = 80) -> Path:  # fmt: skip
    """One panel per metric, one line per run; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, smooth(values, window), label=label, linewidth=1.3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)
    return out
