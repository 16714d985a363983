"""Regression check: reproduce published BEIR numbers with `embedkit beir`'s pipeline.

    python benchmarks/beir_regression.py            # all entries of benchmarks/regressions.yaml
    python benchmarks/beir_regression.py --only scifact-minilm-flat

Writes benchmarks/beir_regression.md and exits non-zero when a number is out of tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from embedkit.encoding import EncoderConfig
from embedkit.paths import shared_data_dir
from embedkit.pipelines.beir import run_beir

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run one entry by name")
    parser.add_argument("--rebuild", action="store_true", help="re-encode even if a matching index exists")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        print("../shared/data is not available", file=sys.stderr)
        return 2
    entries = yaml.safe_load((HERE / "regressions.yaml").read_text())
    rows, failures = [], 0
    for entry in entries:
        if args.only and entry["name"] != args.only:
            continue
        started = time.perf_counter()
        result = run_beir(data / entry["dataset"], EncoderConfig(model=entry["model"]), split=entry["split"],
                          factory=entry["index_factory"], rebuild=args.rebuild, quiet=False)
        seconds = time.perf_counter() - started
        for metric, expected in entry["expected"].items():
            got = result.metrics[metric]
            ok = abs(got - expected) <= entry["tolerance"]
            failures += not ok
            rows.append((entry["name"], metric, expected, got, entry["tolerance"], "ok" if ok else "FAIL", seconds))
            print(f"{entry['name']:<24} {metric:<11} expected {expected:.4f} got {got:.4f} {'ok' if ok else 'FAIL'}")
    lines = [
        "# BEIR regressions",
        "",
        "Produced by `python benchmarks/beir_regression.py` (expected values: `benchmarks/regressions.yaml`).",
        "Time includes encoding the corpus unless a matching index was reused; it depends on the machine's load",
        f"(1-minute load average at the end of this run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores).",
        "",
        "| entry | metric | expected | embedkit | tolerance | status | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {m} | {e:.4f} | {g:.4f} | ±{t} | {s} | {sec:.0f} |" for n, m, e, g, t, s, sec in rows]
    (HERE / "beir_regression.md").write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
