"""Every module of embedkit and agents imports (cheap guard against a broken import anywhere; the same
walker `make check-lower-bounds` runs in a venv holding the declared minimum versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_module_imports():
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "lower_bounds.py"), "--imports-only"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0 and not failures, result.stdout[-4000:] + result.stderr[-2000:]


def test_lower_bound_pins_come_from_pyproject(tmp_path):
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        from lower_bounds import lower_bound_pins
    finally:
        sys.path.pop(0)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["torch>=2.2", "transformers>=5.4", "ray[data]>=2.10"]\n')
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# cpu wheel\ntorch==2.13.0\n")
    assert lower_bound_pins(pyproject, constraints) == ["torch==2.13.0", "transformers==5.4", "ray==2.10"]
    pyproject.write_text('[project]\ndependencies = ["numpy"]\n')
    with pytest.raises(SystemExit, match="without a lower bound"):
        lower_bound_pins(pyproject, constraints)
    real = lower_bound_pins(ROOT / "pyproject.toml", ROOT / "constraints.txt")
    assert "transformers==5.4" in real and "sentence-transformers==5.4" in real
