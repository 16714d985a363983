"""Smoke run of benchmarks/index_updates.py: one tiny size, the working tree only, a tiny model as the encoder.

It runs the real commands (`index import --copy`, `add`, `remove`, `compact`, `serve` and an add while it
serves) and checks that the report holds a measurement for each; the timings themselves are not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "index_updates.py"


def test_quick_run_reports_every_measurement(tmp_path):
    from embedkit.training.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path / "tiny", seed=0, hidden_size=32, layers=1)
    out = tmp_path / "report" / "updates.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sizes", "120", "--no-base", "--model",
                           str(model), "--dim", "32", "--out", str(out), "--work", str(tmp_path / "work")],
                          env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    [size] = report["sizes"]
    [result] = size["results"]
    assert size["documents"] == 120 and result["variant"] == "after"
    assert report["code"]["after"] == str(SCRIPT.parent.parent / "embedkit" / "__init__.py")
    assert len(result["add_s"]) == 1 and len(result["remove_s"]) == 1 and result["compact_s"] > 0
    assert result["folder_bytes"] > 0 and "manifest.json" in result["files_after_updates"]
    # The server found the document added while it was serving, and no request failed meanwhile.
    assert result["first_answer_s"] is not None and result["failed_answers"] == 0
    # The in-process reload after an add kept the segments the add did not touch and read only the new one.
    assert size["reload"]["reuse_second"]["kept"] >= 1 and size["reload"]["reuse_second"]["read"] == 1
    text = out.read_text()
    assert "| 120 | - / " in text and "--quick --sizes 120" in text and "load average" in text
