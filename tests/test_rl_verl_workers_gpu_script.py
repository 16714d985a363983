"""benchmarks/rl_gpu_step.py --verl: stops with exit 2 before the first GPU call on a CPU, and its verl step
(rollout, verl's `compute_advantage` with embedkit_grpo, `update_actor` with TRE-K and with MGS) runs end to end
on the test-only CPU verl platform (tests/verl_cpu.py), so the GPU run executes code CI has run."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests import verl_cpu

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "rl_gpu_step.py"
pytestmark = pytest.mark.slow


def test_script_stops_before_the_first_gpu_call(tmp_path):
    out = tmp_path / "verl.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--verl", "--tiny", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: no GPU here" in proc.stderr and "verl's config composed for TRE-K and MGS" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_scripts_verl_step_runs_on_the_cpu_platform(tmp_path):
    spec = importlib.util.spec_from_file_location("rl_gpu_step", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from agents.rl.verl.launcher import compose
    from agents.rl.verl.plugin import register_all

    register_all()
    args = argparse.Namespace(tiny=True, micro_batch_size=4, max_new_tokens=6)
    with verl_cpu.cpu_platform():
        verl_cpu.init_gloo()
        model_dir = tmp_path / "model"
        tok = bench._write_model(model_dir, tiny=True)
        configs = {label: compose(bench._verl_overrides(model_dir, args, 8) + extra)
                   for label, extra in bench.VERL_RUNS.items()}  # fmt: skip
        rows = bench._verl_runs(model_dir, tok, configs, args, groups=2, group_size=4, device="cpu")
    tre, mgs, rollout = (row.split("|")[1:-1] for row in rows)
    assert tre[0].strip() == "TRE-K" and float(tre[5]) > 0 and tre[6].strip() == "–"
    assert mgs[0].strip() == "MGS" and mgs[5].strip() == "–" and mgs[6].strip() == "2"
    assert float(tre[4]) > 0 and float(mgs[4]) > 0  # grad norms
    assert "mean reward" in rollout[3]
