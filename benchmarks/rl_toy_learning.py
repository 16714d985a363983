"""Learning curves of the RL module on the CPU toy task (configs/rl_*_toy.yaml).

Runs GRPO, GRPO + TRE-K, GRPO + TRE-P, ROSE, and two-domain GRPO with MGS (plus its no-surgery baseline),
each over several seeds, then writes benchmarks/rl_toy_results.md (mean and spread over seeds),
benchmarks/rl_toy_curves.csv and benchmarks/rl_toy_curves.png (mean curve per run).

    python benchmarks/rl_toy_learning.py --seeds 0,1,2          # every run and seed, then the report
    python benchmarks/rl_toy_learning.py --runs grpo --steps 60 --seeds 0
    python benchmarks/rl_toy_learning.py --report-only          # rebuild the report from --workdir
Runs are independent processes' worth of work: start several with different --runs/--seeds to use more cores.
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
    "grpo+tre_p": ("configs/rl_tre_toy.yaml", {"term.name": "tre_p", "term.params": {"coef": 0.001, "p": 0.99}}),
    "rose": ("configs/rl_rose_toy.yaml", {}),  # sequential rollouts: ~3x slower per step
    "grpo-2dom": ("configs/rl_mgs_toy.yaml", {"surgery.name": "none"}),
    "grpo-2dom+mgs": ("configs/rl_mgs_toy.yaml", {}),
}
OUT = ROOT / "benchmarks"
CURVE_KEYS = ("reward_mean", "metric/exact_match", "entropy", "kl", "response_length", "clip_frac", "step_s")


def run(name: str, workdir: Path, steps: int | None, threads: int, seed: int) -> None:
    config_path, overrides = RUNS[name]
    overrides = {**overrides, "trainer.output_dir": str(workdir / name / f"seed-{seed}"), "trainer.resume": False,
                 "trainer.num_threads": threads, "trainer.save_every": 0, "trainer.seed": seed}  # fmt: skip
    if steps:
        overrides["trainer.steps"] = steps
    config = RLConfig.from_yaml(ROOT / config_path, overrides=overrides)
    started = time.perf_counter()
    trainer = RLTrainer(config)
    trainer.train()
    print(f"{name} seed {seed}: {time.perf_counter() - started:.0f}s", flush=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _spread(values: list[float]) -> str:
    """mean ± sample std (min–max) over seeds."""
    if not values:
        return "n/a"
    m = _mean(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})"


def _mean_curve(seed_runs: list[list[dict]]) -> list[dict]:
    """Per-step mean over seeds of every numeric metric present in all of them."""
    steps = min(len(r) for r in seed_runs)
    out = []
    for i in range(steps):
        keys = set.intersection(*(set(r[i]) for r in seed_runs))
        out.append({k: _mean([float(r[i][k]) for r in seed_runs]) for k in keys
                    if all(isinstance(r[i][k], int | float) for r in seed_runs)})  # fmt: skip
    return out


def _conditions(workdir: Path) -> str:
    """The run conditions an operator wrote to <workdir>/CONDITIONS (one line), if any."""
    note = workdir / "CONDITIONS"
    return f" ({note.read_text(encoding='utf-8').strip()})" if note.is_file() else ""


def report(workdir: Path) -> None:
    runs: dict[str, list[list[dict]]] = {}
    for name in RUNS:
        seeds = sorted((workdir / name).glob("seed-*/metrics.jsonl"))
        if seeds:
            runs[name] = [read_metrics(path) for path in seeds]
    if not runs:
        raise SystemExit(f"no runs under {workdir}")
    lines = [
        "# RL module: learning curves on the CPU toy task",
        "",
        "Task `digit_map` (prompt `next 3:` → `<answer>4</answer>`; `double` d → 2d mod 10 as the second domain),",
        "2-layer character-level GPT-2, 60 supervised warm-up steps on format demonstrations that copy the",
        "prompt's digit (never the right answer), then RL: 32 prompts × 8 responses per step, 2 mini-batches,",
        "lr 1e-3, KL(k3) 0.04 to the warmed-up reference, dual-clip PPO loss (verl's). Reward: closeness",
        "1 − circular distance / 5 (1 only when exact); exact match logged. Values: mean ± std (min–max) over",
        "the seeds. Written by `python benchmarks/rl_toy_learning.py` on a 2-core CPU machine",
        f"({platform.processor() or platform.machine()}), one torch thread per run{_conditions(workdir)}; train times are",
        "wall-clock and include any time other jobs took from the run's core.",
        "",
        "| run | seeds | steps | reward (first 5) | reward (last 10) | exact match (last 10) | entropy (last 10) "
        "| train time per seed (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, seed_runs in runs.items():
        first = [_mean([r["reward_mean"] for r in recs[:5]]) for recs in seed_runs]
        last = [_mean([r["reward_mean"] for r in recs[-10:]]) for recs in seed_runs]
        exact = [_mean([r.get("metric/exact_match", float("nan")) for r in recs[-10:]]) for recs in seed_runs]
        ent = [_mean([r["entropy"] for r in recs[-10:]]) for recs in seed_runs]
        secs = _mean([sum(r["step_s"] for r in recs) for recs in seed_runs])
        lines.append(f"| {name} | {len(seed_runs)} | {min(len(r) for r in seed_runs)} | {_spread(first)} | "
                     f"{_spread(last)} | {_spread(exact)} | {_spread(ent)} | {secs:.0f} |")  # fmt: skip
    lines += ["", "Curves (mean over seeds, moving average over 5 steps): `rl_toy_curves.png`; per-step values",
              "per seed: `rl_toy_curves.csv`.", ""]  # fmt: skip
    with atomic_write(OUT / "rl_toy_results.md") as handle:
        handle.write("\n".join(lines))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "seed", "step", *CURVE_KEYS])
    for name, seed_runs in runs.items():
        for seed, records in enumerate(seed_runs):
            for r in records:
                writer.writerow([name, seed, r["step"], *[f"{r[k]:.5g}" if k in r else "" for k in CURVE_KEYS]])
    with atomic_write(OUT / "rl_toy_curves.csv") as handle:
        handle.write(buffer.getvalue())
    curves = {name: _mean_curve(seed_runs) for name, seed_runs in runs.items()}
    plot_runs(curves, OUT / "rl_toy_curves.png", keys=("reward_mean", "metric/exact_match", "entropy"), window=5, dpi=70)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, help="override the configs' trainer.steps")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/embedkit-rl-toy"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated trainer seeds (default: 0,1,2)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
            if name not in RUNS:
                raise SystemExit(f"unknown run {name}; choose from {', '.join(RUNS)}")
            for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
                run(name, args.workdir, args.steps, args.threads, seed)
    report(args.workdir)


if __name__ == "__main__":
    main()
