"""`embedkit train`: multi-task embedder training from a YAML config."""

from __future__ import annotations

import argparse

from embedkit.cli._common import add_command, add_quiet_argument

EXAMPLES = """\
  embedkit train --config configs/train_multitask.yaml
  embedkit train --config configs/train_multitask.yaml --output-dir runs/mt2 --strategy sequential
  embedkit train --config configs/train_multitask.yaml --strategy sequential --set sequential_order=reversed \\
      --set learning_rate=1e-5 --output-dir runs/mt-reversed
  torchrun --nproc_per_node 4 -m embedkit train --config configs/train_multitask.yaml   # multi-GPU
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "train",
        run,
        help="train an embedder on many tasks from a YAML config",
        description=(
            "Train a sentence-transformers embedder on several datasets (FlagEmbedding jsonl or BEIR train\n"
            "qrels) with a scheduling strategy (batch_shuffle, mixed, sequential, two_stage). Interrupted\n"
            "runs resume from their newest checkpoint; the saved model carries a model card."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("--config", required=True, help="training YAML (see configs/train_multitask.yaml)")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--model", help="override the base model")
    parser.add_argument("--strategy", choices=["batch_shuffle", "mixed", "sequential", "two_stage"])
    parser.add_argument("--max-steps", type=int, help="stop each stage after this many steps (smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value by its dotted key (repeatable), e.g. lora.r=16")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from embedkit.config import parse_set_overrides
    from embedkit.training import TrainConfig, train

    flags = {"output_dir": args.output_dir, "model": args.model, "strategy": args.strategy, "max_steps": args.max_steps}
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **parse_set_overrides(args.overrides)}
    config = TrainConfig.from_yaml(args.config, overrides=overrides)
    result = train(config, quiet=args.quiet)
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s -> {result.output_dir}")
    for name, rows in result.rows.items():
        print(f"  {name}: {rows} training rows")
    for name, metrics in result.evaluation.items():
        print(f"  {name}: nDCG@10 {metrics['nDCG@10']:.4f}")
    return 0
