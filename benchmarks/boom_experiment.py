"""BOOM acceptance experiment on CPU with the bundled all-MiniLM-L6-v2.

Task A = SciFact train qrels; task B = HotpotQA questions -> supporting paragraphs (first 250 questions,
the other 8 paragraphs of each question as hard negatives). In domain: SciFact test and the last 250
HotpotQA questions; out of domain: Cranfield, CISI, MEDLINE, CACM (mean).

Models: base; batch-level shuffling on A+B; BOOM (bags [80, 100], multislerp); the model-soup control
(as many full-data runs as BOOM has bags, seeds seed, seed + 1, …, merged the same way: it separates what
bagging adds from what averaging several runs adds); base trained on A then (i) fine-tuned on B only,
(ii) BOOM update (B + 40% of A, merged into the A model), (iii) retrained on A+B from scratch — identical
in data, seed and settings to the batch-shuffling run, so that model is reused for (iii) rather than
trained twice.

Out of domain: `--ood` names BEIR folders under the shared data (default Cranfield, CISI, MEDLINE, CACM).
BOOM's OOD claim can only be tested on a set where fine-tuning helps at all, so the report marks each OOD
set where batch shuffling beats the base by more than two standard errors and averages those separately.

Budget (2 contended CPU cores): training truncates texts to --train-max-seq-length tokens and uses
--hotpot-negatives hard negatives; evaluation encodes with --eval-max-length tokens and, when
--corpus-cap is set, keeps every judged document of the evaluated queries plus random other documents
up to the cap. Both are printed in the results table. Everything is cached in --work-dir, so a rerun
resumes where an interrupted one stopped.

    python benchmarks/boom_experiment.py --work-dir /tmp/boom-exp --seeds 42 43

Every seed trains every model again (its own sub-folder of --work-dir; BOOM bags use seed, seed + 1);
the table reports the mean over seeds with the standard error (std / sqrt(n)) beside it. Defaults are
the full BEIR test query sets and corpora and the full training data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed CPU spinning only burns time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OOD = ["cranfield", "cisi", "medline", "cacm"]  # the default --ood; the report reads the list it ran with
RESULTS_NAME = "boom_results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def hotpot_split(data: Path, work: Path, negatives_per_question: int) -> tuple[Path, list[str]]:
    """Write task B (first 250 questions) as FlagEmbedding jsonl; return it and the last 250 question ids."""
    from embedkit.training.data import QueryGroup, write_jsonl

    rows = [json.loads(line) for line in open(data / "hotpotqa_dev500" / "dev_subsampled.jsonl", encoding="utf-8")]
    groups = []
    for row in rows[:250]:
        def text(c):
            return f"{c['title']} {c['paragraph_text']}".strip()

        positives = tuple(text(c) for c in row["contexts"] if c["is_supporting"])
        negatives = tuple(text(c) for c in row["contexts"] if not c["is_supporting"])
        groups.append(QueryGroup(row["question_text"], positives, negatives[:negatives_per_question] if negatives_per_question else negatives))
    path = write_jsonl(groups, work / "data" / "hotpotqa_first250.jsonl")
    return path, [row["question_id"] for row in rows[250:]]


def capped_beir(source: Path, out: Path, cap: int | None, query_ids: list[str] | None = None, seed: int = 0,
                max_queries: int | None = None) -> Path:
    """A BEIR folder with the test qrels (optionally restricted to `query_ids`) and a corpus of every judged
    document plus random others up to `cap` (None: the whole corpus)."""
    from embedkit.data import load_qrels

    if (out / "qrels" / "test.tsv").exists():
        return out
    qrels = load_qrels(source / "qrels" / "test.tsv")
    if query_ids is not None:
        keep = set(query_ids)
        qrels = {q: d for q, d in qrels.items() if q in keep}
    if max_queries is not None and len(qrels) > max_queries:
        kept = set(random.Random(seed).sample(sorted(qrels), max_queries))
        qrels = {q: d for q, d in qrels.items() if q in kept}
    judged = {doc for docs in qrels.values() for doc in docs}
    lines = open(source / "corpus.jsonl", encoding="utf-8").read().splitlines()
    ids = [json.loads(line)["_id"] for line in lines]
    chosen = set(range(len(lines)))
    if cap is not None and len(lines) > cap:
        judged_idx = [i for i, d in enumerate(ids) if d in judged]
        others = [i for i, d in enumerate(ids) if d not in judged]
        fill = max(0, cap - len(judged_idx))
        chosen = set(judged_idx) | set(random.Random(seed).sample(others, min(fill, len(others))))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("\n".join(lines[i] for i in sorted(chosen)) + "\n", encoding="utf-8")
    (out / "queries.jsonl").write_text((source / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, rel in docs.items():
                handle.write(f"{q}\t{d}\t{rel}\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/embedkit-boom-exp")
    parser.add_argument("--train-max-seq-length", type=int, default=32)
    parser.add_argument("--eval-max-length", type=int, default=64)
    parser.add_argument("--corpus-cap", type=int, default=0, help="0: full corpora")
    parser.add_argument("--eval-queries", type=int, default=0, help="judged queries per dataset (seeded sample); 0: all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43],
                        help="training seeds; each trains every model (mean and standard error reported)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--update-weight", type=float, default=0.5, help="the BOOM update model's merge weight")
    parser.add_argument("--hotpot-negatives", type=int, default=1, help="hard negatives per HotpotQA question")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--bags", type=float, nargs="+", default=[80.0, 100.0])
    parser.add_argument("--history-ratio", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1 wastes least CPU on an oversubscribed machine)")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this per-dataset sample of A and B (1: all), the same for every model")
    parser.add_argument("--train-on", choices=["AB", "A"], default="AB",
                        help="AB: SciFact + HotpotQA (the updates need both); A: SciFact only, so the held-out "
                             "HotpotQA questions are out of domain too and the update rows are not trained")
    parser.add_argument("--ood", nargs="+", default=OOD,
                        help="out-of-domain BEIR folders under the shared data (default: %(default)s)")
    parser.add_argument("--part", choices=["all", "shuffle", "boom", "soup", "updates", "update_merge", "report"],
                        default="all",
                        help="run one part (parts can run as parallel processes; 'report' only writes the table)")
    parser.add_argument("--results-name", default=RESULTS_NAME, help="benchmarks/<name>.md and .json")
    parser.add_argument("--skip-a-only-eval", action="store_true", help="do not evaluate the intermediate A model")
    parser.add_argument("--note", help="markdown file appended to the table (e.g. what changed since the last run)")
    args = parser.parse_args()
    if args.train_on == "A" and args.part in ("updates", "update_merge"):
        parser.error("--train-on A trains no update models (they add task B)")

    import torch

    torch.set_num_threads(args.threads)
    from embedkit.paths import shared_data_dir

    data = shared_data_dir()
    if data is None:
        print("shared data not found (../shared/data or $EMBEDKIT_SHARED_DATA)", file=sys.stderr)
        return 2
    root = Path(args.work_dir)
    if args.part != "report":
        for seed in args.seeds:
            log(f"seed {seed}")
            run_seed(args, data, root, seed)
    write_results([merged_state(root / f"seed-{seed}") for seed in args.seeds], args, root)
    return 0


def run_seed(args, data: Path, root: Path, seed: int) -> None:
    """Train and evaluate every model of the experiment with one seed, in `root/seed-<seed>`."""
    from embedkit.boom import BoomConfig, MergeSettings, UpdateSettings, boom_train, boom_update
    from embedkit.training import DatasetConfig, TrainConfig, load_tasks, train
    from embedkit.training.evaluation import evaluate_suite
    from embedkit.training.modeling import resolve_model_name

    work = root / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model_name("sentence-transformers/all-MiniLM-L6-v2")
    cap = args.corpus_cap or None

    # Data preparation and evaluation sets are shared by all seeds (only training varies with the seed).
    hotpot_train, hotpot_eval_ids = hotpot_split(data, root, args.hotpot_negatives)
    task_a = DatasetConfig(name="scifact", path=str(data / "scifact"), format="beir", split="train")
    task_b = DatasetConfig(name="hotpotqa", path=str(hotpot_train), format="jsonl")
    if args.train_fraction < 1:
        # One fixed per-dataset subsample (without replacement), shared by every model of the experiment.
        from embedkit.boom import sample_task
        from embedkit.training.data import write_jsonl

        subsets = []
        for task in (task_a, task_b):
            path = root / "data" / f"{task.name}_train_{args.train_fraction:g}.jsonl"
            if not path.exists():
                write_jsonl(sample_task(load_tasks([task])[0], args.train_fraction, 0, purpose="subset").groups, path)
            subsets.append(DatasetConfig(name=task.name, path=str(path), format="jsonl"))
        task_a, task_b = subsets
    mq = args.eval_queries or None
    suite = {
        "scifact": capped_beir(data / "scifact", root / "eval" / "scifact", cap, max_queries=mq),
        "hotpotqa": capped_beir(data / "hotpotqa_dev500" / "beir", root / "eval" / "hotpotqa", cap, hotpot_eval_ids,
                                max_queries=mq),
        **{name: capped_beir(data / name, root / "eval" / name, cap, max_queries=mq) for name in args.ood},
    }
    training = {
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_seq_length": args.train_max_seq_length,
        "hard_negatives": args.hotpot_negatives,
        "epochs": args.epochs,
        "device": "cpu",
        "logging_steps": 20,
        "save_steps": 50,
    }
    # One state file per part, so the parts can run as parallel processes; the report merges them.
    state_file = work / f"state-{args.part}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"train_seconds": {}, "metrics": {}}

    def save_state() -> None:
        state_file.write_text(json.dumps(state, indent=2))

    def trained(name: str, path: Path, make) -> Path:
        if name not in state["train_seconds"]:
            log(f"training {name}")
            state["train_seconds"][name] = make()
            save_state()
            log(f"{name}: {state['train_seconds'][name]:.0f} s")
        return path

    def run_train(name: str, model: str, datasets: list[DatasetConfig]) -> float:
        out = work / "models" / name
        config = TrainConfig(model=model, output_dir=str(out), datasets=datasets, seed=seed, **training)
        return train(config, load_tasks(datasets), quiet=True).train_seconds

    def evaluate(name: str, path: Path) -> None:
        if name in state["metrics"]:
            return
        if name == "base":  # the untrained model on the shared evaluation sets: the same for every seed
            for other in sorted(root.glob("seed-*")):
                done = merged_state(other)["metrics"].get("base")
                if done is not None:
                    log(f"base: reusing the evaluation of {other.name}")
                    state["metrics"]["base"] = done
                    save_state()
                    return
        log(f"evaluating {name}")
        started = time.perf_counter()
        result = evaluate_suite(str(path), [str(p) for p in suite.values()], max_length=args.eval_max_length,
                                batch_size=32, device="cpu", quiet=True)
        state["metrics"][name] = dict(result.metrics)
        state.setdefault("eval_seconds", {})[name] = time.perf_counter() - started
        save_state()
        log(f"{name}: " + ", ".join(f"{k} {v['nDCG@10']:.3f}" for k, v in result.metrics.items()))

    # Each model is evaluated right after it is trained, so an interrupted run still leaves results.
    part = args.part
    tag = args.train_on
    tasks = [task_a, task_b] if tag == "AB" else [task_a]
    if part in ("all", "shuffle"):
        evaluate("base", Path(base))
        name = f"batch_shuffle_{tag}"
        evaluate(name, trained(name, work / "models" / name, lambda: run_train(name, base, tasks)))

    def run_boom() -> float:
        config = BoomConfig(model=base, output_dir=str(work / "models" / f"boom_{tag}"), datasets=tasks,
                            bags=args.bags, seeds=[seed + i for i in range(len(args.bags))],
                            merge=MergeSettings(method="multislerp"), training=training)
        result = boom_train(config, quiet=True)
        return result.train_seconds + result.merge_seconds

    if part in ("all", "boom"):
        evaluate(f"boom_{tag}", trained(f"boom_{tag}", work / "models" / f"boom_{tag}" / "model", run_boom))

    def run_soup() -> float:
        # The control: BOOM's merge of as many models, each on all the data (no bagging), different seeds.
        config = BoomConfig(model=base, output_dir=str(work / "models" / f"soup_{tag}"), datasets=tasks,
                            bags=[100.0] * len(args.bags), seeds=[seed + i for i in range(len(args.bags))],
                            merge=MergeSettings(method="multislerp"), training=training)
        result = boom_train(config, quiet=True)
        return result.train_seconds + result.merge_seconds

    if part in ("all", "soup"):
        evaluate(f"soup_{tag}", trained(f"soup_{tag}", work / "models" / f"soup_{tag}" / "model", run_soup))
    if tag == "A":  # the updates add task B: they belong to the A+B experiment only
        return
    a_path = work / "models" / "A_only"
    if part == "update_merge":  # runs beside the `updates` part: waits for the A model it trains
        while "A_only" not in merged_state(work)["train_seconds"]:
            time.sleep(30)
        state["train_seconds"]["A_only"] = merged_state(work)["train_seconds"]["A_only"]
    if part in ("all", "updates", "update_merge"):
        a_model = str(trained("A_only", a_path, lambda: run_train("A_only", base, [task_a])))
    if part in ("all", "updates"):
        evaluate("A_then_B_finetune", trained("A_then_B_finetune", work / "models" / "A_then_B_finetune",
                                              lambda: run_train("A_then_B_finetune", a_model, [task_b])))
    if part in ("all", "update_merge"):

        def run_update() -> float:
            result = boom_update(a_model, new_data=[task_b], history=[task_a],
                                 output_dir=work / "models" / "A_then_boom_update", seed=seed,
                                 update=UpdateSettings(weight=args.update_weight, history_ratio=args.history_ratio),
                                 training=training, quiet=True)
            return result.train_seconds + result.merge_seconds

        evaluate("A_then_boom_update", trained("A_then_boom_update", work / "models" / "A_then_boom_update" / "model",
                                               run_update))
    if part in ("all", "updates") and not args.skip_a_only_eval:
        evaluate("A_only", Path(a_model))


def merged_state(work: Path) -> dict:
    merged: dict = {"train_seconds": {}, "metrics": {}, "eval_seconds": {}}
    for file in sorted(work.glob("state-*.json")):
        part = json.loads(file.read_text())
        for key in merged:
            merged[key].update(part.get(key, {}))
    return merged


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)); 0 error for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, (var / n) ** 0.5


def paired_difference(per_model: dict, first: str, second: str, column: str) -> tuple[float, float] | None:
    """Mean and standard error over seeds of `first - second` in `column` (paired by seed), or None."""
    a, b = per_model.get(first, {}).get(column), per_model.get(second, {}).get(column)
    if not a or not b or len(a) != len(b):
        return None
    return mean_se([x - y for x, y in zip(a, b, strict=True)])


def reading(per_model: dict, ood: list[str], tag: str = "AB") -> list[str]:
    """What the table can show, computed from it: the OOD sets where fine-tuning helps (batch shuffling over the
    base by more than two standard errors), and whether BOOM differs from the model-soup control there."""
    lines = ["## What these numbers can show (computed from the table)", ""]
    full, boom, soup = f"batch_shuffle_{tag}", f"boom_{tag}", f"soup_{tag}"
    helped = []
    for name in ood:
        diff = paired_difference(per_model, full, "base", name)
        if diff is not None and diff[1] > 0 and diff[0] > 2 * diff[1]:
            helped.append(name)
    if paired_difference(per_model, full, "base", "OOD mean") is None:
        lines.append("- No base and batch-shuffling results for the same seeds: where fine-tuning helps is unknown.")
    elif not helped:
        lines.append(f"- Fine-tuning on {'A+B' if tag == 'AB' else 'A'} helps on none of the OOD sets (batch shuffling is not above the base by more "
                     "than two standard errors on any), so this table cannot test BOOM's OOD claim: a merge that only "
                     "undoes part of the fine-tuning would look \"more robust\" here for that reason alone.")
    else:
        lines.append(f"- Fine-tuning helps on {', '.join(helped)} (the full-data model above the base by > 2 SE); "
                     "the OOD comparisons below use those sets.")
    for name in helped:
        diff = paired_difference(per_model, boom, full, name)
        if diff is not None:
            lines.append(f"- BOOM − full-data model on {name}: {diff[0]:+.4f} ± {diff[1]:.4f}.")
    for column in [*helped, "OOD mean"]:
        diff = paired_difference(per_model, boom, soup, column)
        if diff is None:
            lines.append(f"- BOOM − model soup on {column}: no BOOM and soup results for the same seeds, so "
                         "bagging cannot be separated from averaging several runs.")
            break
        separated = diff[1] > 0 and abs(diff[0]) > 2 * diff[1]
        lines.append(f"- BOOM − model soup on {column}: {diff[0]:+.4f} ± {diff[1]:.4f} — "
                     + ("bagging differs from plain averaging here." if separated else
                        "within two standard errors: what BOOM gains is not told apart from averaging runs."))
    return lines


def write_results(states: list[dict], args, root: Path) -> None:
    tag = getattr(args, "train_on", "AB")
    labels = {
        "batch_shuffle_A": "fine-tuned on A, all data (one run)",
        "boom_A": f"BOOM on A, bags {args.bags} merged with multislerp",
        "soup_A": f"model-soup control: {len(args.bags)} full-data runs on A (seeds seed…seed+{len(args.bags) - 1}) "
                  "merged with multislerp",
        "base": "base all-MiniLM-L6-v2",
        "batch_shuffle_AB": "batch-level shuffling on A+B",
        "retrain_AB": "update (iii): retrained on A+B from scratch (= the batch-shuffling model)",
        "boom_AB": f"BOOM on A+B, bags {args.bags} merged with multislerp",
        "soup_AB": f"model-soup control: {len(args.bags)} full-data runs (seeds seed…seed+{len(args.bags) - 1}) "
                   "merged with multislerp",
        "A_only": "base trained on A (starting point of the updates)",
        "A_then_B_finetune": "update (i): A model fine-tuned on B only",
        "A_then_boom_update": f"update (ii): BOOM update, B + {args.history_ratio:.0%} of A, merged into the A model "
                              f"with weight {args.update_weight}",
    }
    order = ["base", "batch_shuffle_AB", "boom_AB", "soup_AB", "A_only", "A_then_B_finetune", "A_then_boom_update",
             "retrain_AB"]
    in_domain = ["scifact", "hotpotqa"]
    ood = list(getattr(args, "ood", OOD))
    if tag == "A":  # trained on SciFact only: the held-out HotpotQA questions are out of domain as well
        order = ["base", "batch_shuffle_A", "boom_A", "soup_A"]
        in_domain, ood = ["scifact"], ["hotpotqa", *ood]
    columns = [*in_domain, *ood, "OOD mean"]
    titles = {"scifact": "SciFact test", "hotpotqa": "HotpotQA last 250"}
    per_model: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for state in states:
        metrics_by_name = dict(state["metrics"])
        if "batch_shuffle_AB" in metrics_by_name:  # update (iii) is the batch-shuffling model (same data and seed)
            metrics_by_name["retrain_AB"] = metrics_by_name["batch_shuffle_AB"]
        for name, metrics in metrics_by_name.items():
            values = {n: metrics[n]["nDCG@10"] for n in [*in_domain, *ood]}
            values["OOD mean"] = sum(values[n] for n in ood) / len(ood)
            for column, value in values.items():
                per_model.setdefault(name, {}).setdefault(column, []).append(value)
        for name, value in state["train_seconds"].items():
            seconds.setdefault(name, []).append(value)
    rows = []
    for name in sorted(per_model, key=lambda n: order.index(n) if n in order else 99):
        cells = []
        for column in columns:
            mean, se = mean_se(per_model[name][column])
            cell = f"{mean:.4f} ± {se:.4f}" if len(per_model[name][column]) > 1 else f"{mean:.4f}"
            cells.append(f"**{cell}**" if column == "OOD mean" else cell)
        n = len(per_model[name]["scifact"])
        train_s = f"{sum(seconds[name]) / len(seconds[name]):.0f}" if name in seconds else "—"
        rows.append(f"| {labels.get(name, name)} | {n} | " + " | ".join(cells) + f" | {train_s} |")
    suite_dir = root / "eval"
    sizes = {p.name: sum(1 for _ in open(p / "corpus.jsonl")) for p in sorted(suite_dir.glob("*")) if (p / "corpus.jsonl").exists()}
    queries = {p.name: len({line.split("\t")[0] for line in open(p / "qrels" / "test.tsv").read().splitlines()[1:]})
               for p in sorted(suite_dir.glob("*")) if (p / "qrels" / "test.tsv").exists()}
    missing = [labels[n] for n in order if n != "retrain_AB" and n not in per_model or len(per_model[n]["scifact"]) < len(args.seeds)]
    command = (f"python benchmarks/boom_experiment.py --train-on {tag} --seeds {' '.join(map(str, args.seeds))} "
               f"--ood {' '.join(args.ood)} --corpus-cap {args.corpus_cap} --eval-queries {args.eval_queries} "
               f"--eval-max-length {args.eval_max_length} --train-max-seq-length {args.train_max_seq_length} "
               f"--train-fraction {args.train_fraction:g} --epochs {args.epochs:g} --batch-size {args.batch_size} "
               f"--learning-rate {args.learning_rate:g} --bags {' '.join(f'{b:g}' for b in args.bags)} "
               f"--threads {args.threads} --results-name {Path(args.results_name).name}")
    text = [
        "# BOOM acceptance experiment (CPU, all-MiniLM-L6-v2)" + (" trained on SciFact only" if tag == "A" else ""),
        "",
        "Produced by `benchmarks/boom_experiment.py`; numbers are whatever the run gave. Reproduce (trains and "
        "evaluates every model again):",
        "",
        f"    {command}",
        "",
        f"nDCG@10, mean ± standard error over seeds {args.seeds} (n = seeds with a result).",
        "",
        "| model | n | " + " | ".join(titles.get(c, c) for c in columns) + " | train s |",
        "|---|---|" + "---|" * len(columns) + "---|",
        *rows,
        "",
        *reading(per_model, ood, tag),
        "",
        *([f"**Incomplete run: not every seed has results for {', '.join(missing)}.**", ""] if missing else []),
        "Training seconds are wall-clock on a shared, heavily contended 2-core CPU (other jobs ran at the same",
        "time), so they compare only roughly; BOOM and the BOOM update include the merge time.",
        "",
        "## Settings",
        "",
        ("- Task A: SciFact `qrels/train.tsv` (in-batch negatives only); no task B: every model trains on A alone, "
         "so the held-out HotpotQA questions count as out of domain." if tag == "A" else
         "- Task A: SciFact `qrels/train.tsv` (in-batch negatives only). Task B: first 250 HotpotQA dev questions -> "
         f"their 2 supporting paragraphs, {args.hotpot_negatives} of the 8 distractor paragraphs as hard negatives.")
        + (f" Every model trains on the same fixed {args.train_fraction:.0%} per-dataset sample of each task."
           if args.train_fraction < 1 else " Full training data."),
        f"- Training: MultipleNegativesRankingLoss, {args.epochs:g} epoch(s), batch {args.batch_size}, lr "
        f"{args.learning_rate}, max_seq_length {args.train_max_seq_length}, seeds {args.seeds} (BOOM bags seed, "
        "seed + 1), strategy batch_shuffle."
        + ("" if tag == "A" else " The BOOM update merges with an explicit weight "
           f"({args.update_weight} for the update model, {1 - args.update_weight:g} for the A model)."),
        f"- Evaluation: cosine, exact search, documents truncated to {args.eval_max_length} tokens; the queries are "
        "encoded with the prompts saved in each model (none here: no task has an instruction).",
        "- Judged test queries used: " + ", ".join(f"{k} {v}" for k, v in queries.items())
        + ". Corpus sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + (f" — reduced: {f'at most {args.eval_queries} judged queries per dataset (seeded sample)' if args.eval_queries else 'the full test query sets'}"
           + (f"; each corpus is every judged document of those queries plus random other documents up to {args.corpus_cap} "
              "(no fill where the judged documents already exceed it), so absolute nDCG@10 is higher than on the full "
              "corpora; all models are compared on identical sets." if args.corpus_cap else "; full corpora.")
           if args.corpus_cap or args.eval_queries else " (full test query sets and corpora)."),
        "- The base model is not trained, so it is evaluated once and its row repeats that value for every seed "
        "(standard error 0 by construction).",
        "- HotpotQA evaluation: queries drawn only from the last 250 questions of `hotpotqa_dev500` (never trained on), "
        "documents from its BEIR paragraph folder.",
        *([] if tag == "A" else [
            "- Update (iii) \"retrained on A+B from scratch\" has exactly the data, seed and settings of the "
            "batch-shuffling run; the same model is reported once."]),
    ]
    if args.note:
        text += ["", Path(args.note).read_text(encoding="utf-8").rstrip()]
    results = REPO / "benchmarks" / args.results_name
    results.with_suffix(".md").write_text("\n".join(text) + "\n", encoding="utf-8")
    results.with_suffix(".json").write_text(json.dumps({"settings": vars(args), "corpus_sizes": sizes, "queries": queries,
                                                        "per_seed": states}, indent=2), encoding="utf-8")
    log(f"wrote {results.with_suffix('.md')}")


if __name__ == "__main__":
    raise SystemExit(main())
