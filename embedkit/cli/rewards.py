"""`embedkit rewards …`: evaluate generative reward models on preference pairs, build their training data,
and train them with the RL module (ConsistRM, ReflectRM, AC-GenRM/ACPO)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embedkit.cli._common import add_command
from embedkit.cli.rl import add_train_arguments, config_from_args
from embedkit.errors import EmbedkitError

JUDGE_NAMES = "consistrm|reflectrm|acgenrm|pairwise"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rewards",
        help="generative reward models: evaluate judges on preference pairs, build data, train",
        description="Evaluate pairwise judges (accuracy, flip rate, position bias), build labelled pairs and "
        "training prompts, and train ConsistRM / ReflectRM judges or ACPO policies with the RL module.",
    )
    sub = parser.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    ev = add_command(
        sub, "eval", _eval,
        help="judge preference pairs in both orders; accuracy per subset, flip rate, position-bias gap",
        description="Reads preference pairs (RewardBench, RM-Bench, chat, JudgeBench, RMB pairwise/Best-of-N or "
        "PPE human-preference layout, or PPE correctness rows with one pair each: first correct vs first incorrect "
        "response; jsonl, json or parquet), judges each pair with the chosen response first "
        "and second, and prints a table (and JSON with --out). Ties and unreadable verdicts are counted, never "
        "scored as correct. RewardBench subsets also get the leaderboard's section-weighted score next to the "
        "plain accuracy; RMB Best-of-N items their BoN accuracy.",
        examples="  embedkit rewards eval --pairs pairs.jsonl --judge pairwise --llm hf:runs/judge/checkpoints/step-50/policy\n"
        "  embedkit rewards eval --pairs rm-bench.jsonl --judge acgenrm --llm openai:http://127.0.0.1:8000 "
        "--llm-model qwen --out report.json\n"
        "  embedkit rewards eval --pairs pairs.jsonl --judge reflectrm --llm hf:PATH --option n_analyses=4",
    )  # fmt: skip
    ev.add_argument("--pairs", required=True, help="preference pairs: jsonl, json or parquet (see the description)")
    ev.add_argument("--judge", required=True, help=f"judge: {JUDGE_NAMES}")
    ev.add_argument("--llm", required=True, help="hf:PATH (local or hub causal LM) or openai:URL (any OpenAI-compatible server)")
    ev.add_argument("--llm-model", help="served model name for openai:URL")
    ev.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="judge option (e.g. max_new_tokens=256, n_analyses=4, temperature=0.7), repeatable")  # fmt: skip
    ev.add_argument("--subset", action="append", help="only these subsets (repeatable)")
    ev.add_argument("--limit", type=int, help="only the first N pairs")
    ev.add_argument("--batch-size", type=int, default=32, help="judgements per backend call (default: 32)")
    ev.add_argument("--out", help="write the report as JSON here")
    ev.add_argument("--records", help="write every judgement with its text here (jsonl)")

    pc = add_command(
        sub, "ppe-correctness", _ppe_correctness,
        help="PPE's correctness metrics (best-of-K, pair accuracy, AUC, ...) from per-response rewards",
        description="Reads PPE correctness sets (lmarena-ai/PPE-*-Best-of-K: question_id, model_name, prompt, "
        "scores, response_1..response_K; a local parquet/jsonl/json file, a hub id, or a short name: "
        "mmlu_pro, math, gpqa, mbpp_plus, ifeval) and one reward per response from any reward model (jsonl: "
        '{"id": "<question_id>/<model_name>", "rewards": [...]}, null for a response it could not score), and '
        "prints accuracy, end score (best-of-K at K = all responses), maximum achieved best-of-K, loss against "
        "the perfect reward model's curve, row-wise Pearson and ROC AUC per benchmark (the curves with --out). "
        "Pairwise judges are scored on the same files with `rewards eval --pairs FILE` (one pair per row).",
        examples="  embedkit rewards ppe-correctness --data ppe_math.parquet --rewards ppe-rewards.jsonl\n"
        "  embedkit rewards ppe-correctness --data math --data gpqa --rewards ppe-rewards.jsonl --out ppe.json",
    )  # fmt: skip
    pc.add_argument("--data", action="append", required=True,
                    help="a PPE correctness set: file, hub id or short name (repeatable)")  # fmt: skip
    pc.add_argument("--rewards", required=True, help="per-response rewards jsonl (see the description)")
    pc.add_argument("--limit", type=int, help="only the first N rows of each set")
    pc.add_argument("--out", help="write the report (with the best-of-K curves) as JSON here")

    bp = add_command(
        sub, "build-pairs", _build_pairs,
        help="labelled pairs with known winners from ../shared/data (QA) and the RL module's checkers",
        examples="  embedkit rewards build-pairs --out pairs.jsonl --per-source 100\n"
        "  embedkit rewards build-pairs --sources countdown,math --per-source 50 --out synth.jsonl --held-out 0.3",
    )  # fmt: skip
    bp.add_argument("--out", required=True, help="pairs jsonl to write")
    bp.add_argument("--sources", default="hotpotqa,nq,bamboogle,countdown,math", help="comma-separated sources")
    bp.add_argument("--per-source", type=int, default=100, help="pairs per source (default: 100)")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--shared-dir", help="the shared data folder (default: ../shared/data)")
    bp.add_argument("--held-out", type=float, default=0.0,
                    help="also write <out>.train.jsonl and <out>.heldout.jsonl with this fraction held out")  # fmt: skip

    pr = add_command(
        sub, "build-prompts", _build_prompts,
        help="training prompts for ConsistRM, ReflectRM or ACPO from a pair file",
        examples="  embedkit rewards build-prompts --kind consistrm --pairs pairs.jsonl --out runs/consistrm/prompts.jsonl\n"
        "  embedkit rewards build-prompts --kind reflectrm --pairs pairs.jsonl --llm hf:PATH --out reflect.jsonl\n"
        "  embedkit rewards build-prompts --kind acpo --pairs pairs.jsonl --out queries.jsonl",
    )  # fmt: skip
    pr.add_argument("--kind", required=True, choices=["consistrm", "reflectrm", "acpo"])
    pr.add_argument("--pairs", required=True, help="preference pairs: jsonl, json or parquet")
    pr.add_argument("--out", required=True, help="training prompts jsonl to write (the judge_prompts / jsonl task)")
    pr.add_argument("--llm", help="reflectrm: the judge that samples analyses (hf:PATH or openai:URL)")
    pr.add_argument("--llm-model", help="served model name for openai:URL")
    pr.add_argument("--n-analyses", type=int, default=4, help="reflectrm: analyses sampled per pair (default: 4)")
    pr.add_argument("--ratio", type=float, default=4.0,
                    help="reflectrm: response-preference prompts per analysis-preference prompt (default: 4, inferred from the paper)")  # fmt: skip
    pr.add_argument("--demonstrations", action="store_true",
                    help="consistrm, reflectrm: add format-only demonstrations (random verdicts / choices) for a warm-up")
    pr.add_argument("--long-form-subsets", default="", help="acpo: comma-separated subsets whose queries are long-form")
    pr.add_argument("--seed", type=int, default=0)

    tr = add_command(
        sub, "train", _train,
        help="train a judge (ConsistRM, ReflectRM) or an ACPO policy from an RL config, memory checkpointed",
        description="Like `embedkit rl train`, and the reward's and task's state (ConsistRM's per-item memory, "
        "the position in the current pass) is saved with every checkpoint and restored on resume.",
        examples="  embedkit rewards train --config configs/rm_consistrm.yaml\n"
        "  embedkit rewards train --config configs/rm_reflectrm.yaml --set trainer.steps=200",
    )  # fmt: skip
    add_train_arguments(tr, "configs/rm_*.yaml")


def _eval(args: argparse.Namespace) -> int:
    from agents.rewards.evaluate import judge_pairs, summarize, write_judgements
    from agents.rewards.judges import JUDGES, build_judge, build_llm
    from agents.rewards.pairs import load_pairs
    from embedkit.config import parse_set_overrides

    if args.judge not in JUDGES:
        raise EmbedkitError(f"unknown judge '{args.judge}'; choose one of: {', '.join(JUDGES.names())}")
    pairs = load_pairs(args.pairs, subsets=args.subset, limit=args.limit)
    options = parse_set_overrides(args.option)
    for key in ("max_new_tokens", "n_analyses"):
        if key in options:
            options[key] = int(options[key])
    judge = build_judge(args.judge, build_llm(args.llm, model=args.llm_model), **options)
    judgements = judge_pairs(pairs, judge, batch_size=args.batch_size)
    report = summarize(judgements, args.judge, {"pairs_file": str(args.pairs), "llm": args.llm, "options": options})
    print(report.table())
    if args.out:
        from embedkit.io import atomic_write

        with atomic_write(Path(args.out)) as handle:
            handle.write(report.to_json() + "\n")
        print(f"report -> {args.out}", file=sys.stderr)
    if args.records:
        write_judgements(args.records, judgements)
    return 0


def _ppe_correctness(args: argparse.Namespace) -> int:
    from agents.rewards.ppe import (
        correctness_metrics,
        load_correctness,
        load_rewards,
        metrics_table,
        write_report,
    )

    rows = [row for source in args.data for row in load_correctness(source, limit=args.limit)]
    report = correctness_metrics(rows, load_rewards(args.rewards), rewards_path=args.rewards)
    print(metrics_table(report))
    if args.out:
        write_report(args.out, report)
        print(f"report -> {args.out}", file=sys.stderr)
    return 0


def _build_pairs(args: argparse.Namespace) -> int:
    from agents.rewards.pair_data import build_pairs, split_pairs
    from agents.rewards.pairs import write_pairs

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    pairs = build_pairs(sources, args.per_source, args.seed, args.shared_dir)
    out = Path(args.out)
    write_pairs(out, pairs)
    print(f"{len(pairs)} pairs -> {out}")
    if args.held_out > 0:
        if not 0 < args.held_out < 1:
            raise EmbedkitError("--held-out must be a fraction between 0 and 1")
        train, test = split_pairs(pairs, args.held_out, args.seed)
        stem = out.with_suffix("")
        write_pairs(f"{stem}.train.jsonl", train)
        write_pairs(f"{stem}.heldout.jsonl", test)
        print(f"{len(train)} train -> {stem}.train.jsonl; {len(test)} held out -> {stem}.heldout.jsonl")
    return 0


def _build_prompts(args: argparse.Namespace) -> int:
    from agents.rewards.pairs import load_pairs
    from agents.rewards.training import acpo_records, consistrm_records, write_records_jsonl

    pairs = load_pairs(args.pairs)
    if args.kind == "consistrm":
        records = consistrm_records(pairs, demonstrations=args.demonstrations, seed=args.seed)
    elif args.kind == "acpo":
        subsets = [s.strip() for s in args.long_form_subsets.split(",") if s.strip()]
        records = acpo_records(pairs, long_form_subsets=subsets)
    else:
        from agents.rewards.judges import build_llm
        from agents.rewards.reflectrm import reflectrm_records

        backend = build_llm(args.llm, model=args.llm_model) if args.llm else None
        if backend is None:
            print("no --llm: building the response-preference task only", file=sys.stderr)
        records = reflectrm_records(pairs, backend, n_analyses=args.n_analyses, ratio=args.ratio, seed=args.seed,
                                    demonstrations=args.demonstrations)  # fmt: skip
    write_records_jsonl(args.out, records)
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("domain", "default")] = counts.get(record.get("domain", "default"), 0) + 1
    print(f"{len(records)} prompts ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}) -> {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from agents.rewards.training import GRMTrainer

    config = config_from_args(args)
    history = GRMTrainer(config).train()
    if history:
        last = history[-1]
        print(f"step {last['step']}: reward_mean={last['reward_mean']:.4f} -> {config.trainer.output_dir}")
    return 0
