"""`embedkit rl …`: train a policy with the shared RL module and plot its learning curves."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.cli._common import add_command
from embedkit.cli.rl_verl_data import add_verl_data_command
from embedkit.errors import EmbedkitError

if TYPE_CHECKING:
    from agents.rl.config import RLConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rl",
        help="reinforcement learning: GRPO/PPO with TRE, ROSE, MGS; plots",
        description="Train LM policies with GRPO, Dr.GRPO or PPO (plus TRE, ROSE, MGS) from a YAML config.",
    )
    sub = parser.add_subparsers(dest="rl_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    train = add_command(
        sub, "train", _train,
        help="train a policy from a YAML config (resumes from the newest checkpoint)",
        description="Roll out, score, compute advantages and update the policy; metrics go to "
        "<output_dir>/metrics.jsonl and metrics.csv, checkpoints to <output_dir>/checkpoints/step-N.",
        examples="  embedkit rl train --config configs/rl_grpo_toy.yaml\n"
        "  embedkit rl train --config configs/rl_grpo_toy.yaml --set term.name=tre_k --set trainer.steps=50\n"
        "  embedkit rl train --config configs/rl_search_toy.yaml --output-dir runs/search",
    )  # fmt: skip
    add_train_arguments(train, "configs/rl_*.yaml")
    add_verl_data_command(sub)

    plot = add_command(
        sub, "plot", _plot,
        help="plot learning curves of one or more runs to a PNG",
        examples="  embedkit rl plot runs/grpo runs/tre --out curves.png --metrics reward_mean,entropy --smooth 5",
    )  # fmt: skip
    plot.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files); label=PATH to name a line")
    plot.add_argument("--out", required=True, help="PNG to write")
    plot.add_argument("--metrics", default="reward_mean,entropy,response_length",
                      help="comma-separated metric names (default: reward_mean,entropy,response_length)")  # fmt: skip
    plot.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default: 1)")


def add_train_arguments(parser: argparse.ArgumentParser, configs: str) -> None:
    """The flags of every command that trains from an RL config (`rl train`, `rewards train`)."""
    parser.add_argument("--config", required=True, help=f"YAML file (see {configs})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted key, YAML value), repeatable")  # fmt: skip
    parser.add_argument("--output-dir", help="overrides trainer.output_dir")
    parser.add_argument("--steps", type=int, help="overrides trainer.steps")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even when checkpoints exist")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RLConfig:
    """The RL config: the YAML, then `--set`, then the dedicated flags."""
    from agents.rl.config import RLConfig
    from embedkit.config import parse_set_overrides

    overrides = parse_set_overrides(args.set)
    if args.output_dir:
        overrides["trainer.output_dir"] = args.output_dir
    if args.steps is not None:
        overrides["trainer.steps"] = args.steps
    if args.no_resume:
        overrides["trainer.resume"] = False
    if args.quiet:
        overrides["trainer.progress"] = False
    return RLConfig.from_yaml(args.config, overrides=overrides)


def _train(args: argparse.Namespace) -> int:
    from agents.rl.trainer import RLTrainer

    config = config_from_args(args)
    history = RLTrainer(config).train()
    if history:
        last = history[-1]
        print(f"step {last['step']}: reward_mean={last['reward_mean']:.4f} entropy={last['entropy']:.4f} "
              f"-> {config.trainer.output_dir}")  # fmt: skip
    else:
        print(f"nothing to do: {config.trainer.output_dir} already reached step {config.trainer.steps}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from agents.rl.metrics import plot_runs, read_metrics

    runs = {}
    for spec in args.runs:
        label, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        runs[label] = read_metrics(path)
    keys = [k.strip() for k in args.metrics.split(",") if k.strip()]
    missing = [k for k in keys if not any(k in r for records in runs.values() for r in records)]
    if missing:
        raise EmbedkitError(f"no run has the metric(s) {', '.join(missing)}")
    out = plot_runs(runs, args.out, keys=keys, window=max(1, args.smooth))
    print(out)
    return 0
