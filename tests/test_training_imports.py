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


def test_every_imported_distribution_is_declared_or_optional():
    """A module-level import of a package that neither `[project].dependencies` nor the check's OPTIONAL list
    names passes here (the dev venv has everything) and fails `make check-lower-bounds` on a clean machine —
    as `transfer_queue` did. Imports inside functions are not checked (they run only when used)."""
    import ast
    import importlib.metadata
    import re

    import tomllib

    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        from lower_bounds import OPTIONAL
    finally:
        sys.path.pop(0)

    def normalized(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {normalized(re.match(r"[A-Za-z0-9_.\-]+", dep).group(0)) for dep in dependencies}
    distributions = importlib.metadata.packages_distributions()
    undeclared: dict[str, list[str]] = {}
    for package in ("embedkit", "agents"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for statement in ast.parse(path.read_text(encoding="utf-8")).body:
                # `try: import x` / `if ...: import x` at module level run at import time too
                nodes = ast.walk(statement) if isinstance(statement, (ast.Try, ast.If)) else [statement]
                for node in nodes:
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top in sys.stdlib_module_names or top in ("embedkit", "agents", "__future__"):
                            continue
                        if top in OPTIONAL or {normalized(d) for d in distributions.get(top, [])} & declared:
                            continue
                        undeclared.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported at module level but not declared (pyproject) nor optional (.ci): {undeclared}"
