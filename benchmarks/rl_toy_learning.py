"""Learning curves of the RL module on the CPU toy task (configs/rl_*_toy.yaml).

Runs GRPO, GRPO + TRE-K, ROSE, and two-domain GRPO with MGS (plus its no-surgery baseline), then writes
benchmarks/rl_toy_results.md (table), benchmarks/rl_toy_curves.csv and benchmarks/rl_toy_curves.png.

    python benchmarks/rl_toy_learning.py                       # every run, then the report
    python benchmarks/rl_toy_learning.py --runs grpo --steps 60
    python benchmarks/rl_toy_learning.py --report-only         # rebuild the report from --workdir
Runs are independent processes' worth of work: start several with different --runs to use more cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.rl.config import RLConfig  # noqa: E402
from agents.rl.metrics import plot_runs, read_metrics  # noqa: E402
from agents.rl.trainer import RLTrainer  # noqa: E402
from embedkit.io import atomic_write  # noqa: E402

RUNS: dict[str, tuple[str, dict]] = {
    "grpo": ("configs/rl_grpo_toy.yaml", {}),
    "grpo+tre_k": ("configs/rl_tre_toy.yaml", {}),
    "rose": ("configs/rl_rose_toy.yaml", {}),  # sequential rollouts: ~3x slower per step
    "grpo-2dom": ("configs/rl_mgs_toy.yaml", {"surgery.name": "none"}),
    "grpo-2dom+mgs": ("configs/rl_mgs_toy.yaml", {}),
}
OUT = ROOT / "benchmarks"
CURVE_KEYS = ("reward_mean", "metric/exact_match", "entropy", "kl", "response_length", "clip_frac", "step_s")


def run(name: str, workdir: Path, steps: int | None, threads: int) -> None:
    config_path, overrides = RUNS[name]
    overrides = {**overrides, "trainer.output_dir": str(workdir / name), "trainer.resume": False,
                 "trainer.num_threads": threads, "trainer.save_every": 0}  # fmt: skip
    if steps:
        overrides["trainer.steps"] = steps
    config = RLConfig.from_yaml(ROOT / config_path, overrides)
    started = time.perf_counter()
    trainer = RLTrainer(config)
    trainer.train()
    print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(workdir: Path) -> None:
    runs = {name: read_metrics(workdir / name) for name in RUNS if (workdir / name / "metrics.jsonl").exists()}
    if not runs:
        raise SystemExit(f"no runs under {workdir}")
    rows = []
    for name, records in runs.items():
        first, last = records[:5], records[-10:]
        rows.append({
            "run": name, "config": RUNS[name][0], "steps": len(records),
            "reward first 5": _mean([r["reward_mean"] for r in first]),
            "reward last 10": _mean([r["reward_mean"] for r in last]),
            "exact first 5": _mean([r.get("metric/exact_match", float("nan")) for r in first]),
            "exact last 10": _mean([r.get("metric/exact_match", float("nan")) for r in last]),
            "entropy last 10": _mean([r["entropy"] for r in last]),
            "train s": sum(r["step_s"] for r in records),
        })  # fmt: skip
    lines = [
        "# RL module: learning curves on the CPU toy task",
        "",
        "Task `digit_map` (prompt `next 3:` → `<answer>4</answer>`; `double` d → 2d mod 10 as the second domain),",
        "2-layer character-level GPT-2 (≈120k parameters), 60 supervised warm-up steps on format demonstrations",
        "that copy the prompt's digit (never the right answer), then RL: 32 prompts × 8 responses per step,",
        "2 mini-batches, lr 1e-3, KL(k3) 0.04 to the",
        "warmed-up reference. Reward: closeness 1 − circular distance / 5 (1 only when exact); exact match logged.",
        "Written by `python benchmarks/rl_toy_learning.py` on a shared, heavily loaded 2-core CPU machine",
        f"({platform.processor() or platform.machine()}); times are wall-clock and inflated by other jobs.",
        "",
        "| run | steps | reward (first 5) | reward (last 10) | exact match (first 5) | exact match (last 10) "
        "| entropy (last 10) | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['steps']} | {r['reward first 5']:.3f} | {r['reward last 10']:.3f} | "
                     f"{r['exact first 5']:.3f} | {r['exact last 10']:.3f} | {r['entropy last 10']:.3f} | "
                     f"{r['train s']:.0f} |")  # fmt: skip
    lines += ["", "Curves (moving average over 5 steps): `rl_toy_curves.png`; per-step values: `rl_toy_curves.csv`.", ""]
    with atomic_write(OUT / "rl_toy_results.md") as handle:
        handle.write("\n".join(lines))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "step", *CURVE_KEYS])
    for name, records in runs.items():
        for r in records:
            writer.writerow([name, r["step"], *[f"{r[k]:.5g}" if k in r else "" for k in CURVE_KEYS]])
    with atomic_write(OUT / "rl_toy_curves.csv") as handle:
        handle.write(buffer.getvalue())
    plot_runs(runs, OUT / "rl_toy_curves.png", keys=("reward_mean", "metric/exact_match", "entropy"), window=5, dpi=70)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, help="override the configs' trainer.steps")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/embedkit-rl-toy"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
            if name not in RUNS:
                raise SystemExit(f"unknown run {name}; choose from {', '.join(RUNS)}")
            run(name, args.workdir, args.steps, args.threads)
    report(args.workdir)


if __name__ == "__main__":
    main()
