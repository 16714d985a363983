"""`embedkit eval`: score a TREC run against qrels with trec_eval semantics, or a model on MTEB tasks."""

from __future__ import annotations

import argparse
import json

from embedkit.cli._common import add_command, positive_int

EXAMPLES = """\
  embedkit eval --run runs/scifact.trec --qrels ../shared/data/scifact/qrels/test.tsv
  embedkit eval --run run.trec --qrels qrels.trec --k 10 20 100 --json metrics.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "eval", run_eval, help="evaluate a run file against qrels",
                         description="nDCG@k, Recall@k, MRR@k, P@k and MAP computed with pytrec_eval (trec_eval\n"
                                     "semantics: averages over the judged queries present in the run).",
                         examples=EXAMPLES)
    parser.add_argument("--run", help="TREC run file (qid Q0 docid rank score tag)")
    parser.add_argument("--qrels", help="BEIR qrels tsv or TREC qrels (qid 0 docid rel)")
    mteb = parser.add_argument_group("MTEB (instead of --run/--qrels; needs the mteb package)")
    mteb.add_argument("--mteb", nargs="+", metavar="TASK",
                      help="evaluate --model on these mteb tasks: mteb names (e.g. STSBenchmark; mteb fetches "
                           "their data), or MODULE:CLASS for a task class on local data; results go to --json")
    mteb.add_argument("--model", help="sentence-transformers model folder (or hub id) for --mteb")
    mteb.add_argument("--batch-size", type=positive_int, help="encoding batch size for --mteb")
    mteb.add_argument("--device", help="device for --mteb (default: automatic)")
    parser.add_argument("--k", type=positive_int, nargs="+", default=[10, 100], help="cut-offs (default: 10 100)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--per-query", action="store_true", help="print a line per query too")


def run_eval(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError

    if args.mteb:
        if args.run or args.qrels or not args.model:
            raise EmbedkitError("--mteb evaluates --model (and takes no --run/--qrels)")
        return run_mteb(args)
    if not (args.run and args.qrels):
        raise EmbedkitError("give --run and --qrels (or --model with --mteb)")
    from embedkit.data.qrels import load_qrels
    from embedkit.data.runs import read_run
    from embedkit.eval import evaluate, format_metrics
    from embedkit.io import atomic_write

    qrels, run = load_qrels(args.qrels), read_run(args.run)
    metrics, per_query = evaluate(run, qrels, args.k, per_query=True)
    if args.per_query:
        for query_id, row in per_query.items():
            print(query_id, " ".join(f"{name}={row[name]:.4f}" for name in (f"nDCG@{args.k[0]}", "MAP")))
    print(format_metrics(metrics, args.k))
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump(metrics, handle, indent=2)
    return 0


def run_mteb(args: argparse.Namespace) -> int:
    from embedkit.mteb_eval import evaluate_mteb

    summary = evaluate_mteb(args.model, args.mteb, output=args.json, batch_size=args.batch_size, device=args.device)
    for task in summary["tasks"]:
        print(f"{task['task']} ({task['type']}): {task['main_score_name']} {task['main_score']:.4f}")
    return 0
