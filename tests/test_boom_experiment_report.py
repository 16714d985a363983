"""`benchmarks/boom_experiment.py --train-on A` (SciFact alone): its report counts the held-out HotpotQA
questions as out of domain, reads BOOM against the full-data model and the model-soup control on the OOD sets
where fine-tuning helps, and writes the command that reproduces it; the update parts, which add task B, are
refused. Report only: state files written here, no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "boom_experiment.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "shared").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EMBEDKIT_SHARED_DATA": str(tmp_path / "shared")})


@pytest.mark.slow  # a subprocess
def test_report_trained_on_a_alone(tmp_path):
    def scores(shift: float, noise: float) -> dict[str, float]:
        return {"scifact": 0.80 + shift, "hotpotqa": 0.97 + shift / 2 + noise, "cacm": 0.58 + noise,
                "medline": 0.92 - shift}

    work = tmp_path / "work"
    for seed, noise in ((1, 0.001), (2, -0.002), (3, 0.0015)):
        models = {"base": scores(0, 0), "batch_shuffle_A": scores(0.01, noise), "boom_A": scores(0.012, -noise),
                  "soup_A": scores(0.012, noise)}
        (work / f"seed-{seed}").mkdir(parents=True)
        state = {"train_seconds": {m: 1.0 for m in models},
                 "metrics": {m: {k: {"nDCG@10": v} for k, v in values.items()} for m, values in models.items()}}
        (work / f"seed-{seed}" / "state-all.json").write_text(json.dumps(state))
    result = _run(tmp_path, "--train-on", "A", "--part", "report", "--work-dir", str(work), "--seeds", "1", "2", "3",
                  "--ood", "cacm", "medline", "--results-name", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report.md").read_text()
    assert "| model | n | SciFact test | HotpotQA last 250 | cacm | medline | OOD mean | train s |" in text
    assert "| fine-tuned on A, all data (one run) | 3 |" in text
    assert "model-soup control: 2 full-data runs on A" in text
    # HotpotQA gains 0.005 over the base in every seed; CACM's gain is noise; MEDLINE loses.
    assert "Fine-tuning helps on hotpotqa (" in text
    assert "BOOM − full-data model on hotpotqa:" in text and "BOOM − model soup on hotpotqa:" in text
    assert "python benchmarks/boom_experiment.py --train-on A --seeds 1 2 3 --ood cacm medline" in text
    assert "update (i)" not in text and "Update (iii)" not in text
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["train_on"] == "A"


def test_updates_need_task_b(tmp_path):
    result = _run(tmp_path, "--train-on", "A", "--part", "updates", "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 2 and "--train-on A trains no update models" in result.stderr
