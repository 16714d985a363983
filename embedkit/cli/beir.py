"""`embedkit beir`: encode → index → search → evaluate a BEIR dataset in one command."""

from __future__ import annotations

import argparse
import json

from embedkit.cli._common import (
    add_command,
    add_encoder_arguments,
    add_quiet_argument,
    encoder_config_from_args,
    positive_int,
)

EXAMPLES = """\
  embedkit beir ../shared/data/scifact                               # bundled all-MiniLM-L6-v2, Flat index
  embedkit beir ../shared/data/scifact --model BAAI/bge-small-en-v1.5 \\
      --query-prefix 'Represent this sentence for searching relevant passages: '
  embedkit beir ../shared/data/scifact --model intfloat/e5-small-v2 --query-prefix 'query: ' --passage-prefix 'passage: '
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "beir", run, help="evaluate a model on a BEIR dataset end to end",
                         description="Encode a BEIR dataset's corpus, build (or reuse) an index, search the split's\n"
                                     "queries, and evaluate. Writes run.trec and metrics.json to --output-dir.",
                         examples=EXAMPLES)
    parser.add_argument("dataset", help="BEIR folder with corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--index-factory", default="Flat", help="FAISS index-factory string (default: Flat)")
    parser.add_argument("--index", help="index folder to build or reuse (default: indexes/DATASET-MODEL-FACTORY)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the index even if a matching one exists")
    parser.add_argument("--output-dir", help="where run.trec and metrics.json go (default: runs/DATASET-MODEL-FACTORY)")
    parser.add_argument("--k", type=positive_int, nargs="+", default=[1, 3, 5, 10, 100, 1000], help="metric cut-offs")
    add_encoder_arguments(parser, model_default=None)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embedkit.eval import format_metrics
    from embedkit.pipelines.beir import default_index_name, run_beir

    config = encoder_config_from_args(args)
    name = default_index_name(args.dataset, config.model, args.index_factory)
    output_dir = Path(args.output_dir or Path("runs") / name)
    result = run_beir(args.dataset, config, split=args.split, factory=args.index_factory, k_values=args.k,
                      index_path=args.index, rebuild=args.rebuild, output_dir=output_dir, quiet=args.quiet)
    print(f"{result.dataset} [{result.split}] with {config.model} ({args.index_factory})")
    print(format_metrics(result.metrics, [k for k in (10, 100) if k in args.k] or args.k[:1]))
    print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'run.trec'}")
    if not args.quiet:
        print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith(("nDCG", "Recall"))}))
    return 0
