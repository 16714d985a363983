"""Agentic-R on HotpotQA dev500 (CPU): supporting-paragraph recall and answer EM before and after training
the retriever on passage utility, with the deterministic search agent (no LLM).

Protocol
- Data: ../shared/data/hotpotqa_dev500 — an interleaved split (default): questions at even file positions
  (1st, 3rd, …) label and train, those at odd positions are held out, so both halves mix HotpotQA's bridge and
  comparison questions alike (the file lists mostly bridge questions first); `--split halves` is the earlier
  first-250 / last-250 split. The corpus is the BEIR folder's 4,858 paragraphs (all 500 questions').
- Start retriever: the bundled all-MiniLM-L6-v2 (no prefixes), Flat inner-product index (cached in indexes/).
- Agent: `HeuristicPolicy` (search the question, then the bridge entity, answer with the best span),
  top-3 passages per search, 4 turns.
- Labelling (the official rules): each search step's top-20 candidates for the query the agent sent (the plain
  query, as in upstream's first round); global utility by answer containment (default; `--global rerun`
  re-runs the agent with only that passage), local utility by the embedder's cosine (the no-LLM proxies);
  pairs: EM then local, skip when the best has EM 0 or local < 0.6, every candidate tied with the best kept
  out of the negatives (≤ 3 of them positives), 15 random negatives from the rest in utility order, steps
  with fewer skipped; training queries "{question} [SEP] {query}".
- Training: MiniLM from its base weights, MultipleNegativesRankingLoss scale 100 (τ 0.01), in-batch + hard
  negatives, lr 2e-5, 2 epochs; then the corpus is re-encoded. To stay within minutes on a shared 2-core CPU,
  each row keeps the first (hardest) 3 of its 15 negatives and training inputs are cut to 64 tokens
  (`--hard-negatives 15 --max-length 256` is the method's setting; the index always encodes with the model's
  own 256-token limit).
- Metrics on the held-out 250: retriever-only Recall@k of the two supporting paragraphs for the question
  (trained retriever: "{question} [SEP] {question}"), the agent's supporting-paragraph recall over all
  passages it was shown (2 searches × top-3), the share of questions with both paragraphs found, EM and F1.

    .venv/bin/python benchmarks/agentic_r_hotpotqa.py            # writes benchmarks/agentic_r_hotpotqa.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.agentic_r import LabelConfig, RetrieverTrainConfig, label, reindex, train_retriever, write_pairs  # noqa: E402
from agents.retrieval import IndexRetriever  # noqa: E402
from agents.search_agent import (  # noqa: E402
    AgentConfig,
    HeuristicPolicy,
    SearchAgent,
    load_questions,
    summarize,
    write_trajectories,  # noqa: E402
)
from embedkit.data import iter_documents, load_qrels  # noqa: E402
from embedkit.defaults import DEFAULT_BATCH_SIZE  # noqa: E402
from embedkit.encoding import Encoder, EncoderConfig  # noqa: E402
from embedkit.eval import evaluate  # noqa: E402
from embedkit.index import Index, build_dense_index  # noqa: E402
from embedkit.paths import shared_data_dir  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SEP = "{question} [SEP] {query}"
K_VALUES = (2, 5, 10, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="hotpotqa_dev500 folder (default: ../shared/data/…)")
    parser.add_argument("--base-index", default=str(ROOT / "indexes" / "hotpotqa500-minilm"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "agentic_r_bench"))
    parser.add_argument("--global", dest="global_utility", default="containment", choices=["containment", "rerun"])
    parser.add_argument("--min-local", type=float, default=0.6)
    parser.add_argument("--split", default="interleaved", choices=["interleaved", "halves"],
                        help="interleaved: even file positions train, odd ones are held out; halves: 1-250 / 251-500")
    parser.add_argument("--negatives", type=int, default=15, help="negatives per pair (steps with fewer are skipped)")
    parser.add_argument("--questions", type=int, default=500,
                        help="use N questions spread evenly over the file (half label, half held out) and only their "
                             "paragraphs as the corpus; fewer keeps a CPU run short")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64, help="training-time token limit")
    parser.add_argument("--hard-negatives", type=int, default=3,
                        help="hard negatives per training row (the method uses 15; fewer keeps CPU time bounded)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "agentic_r_hotpotqa"))
    parser.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json and stop")
    args = parser.parse_args()
    if args.render_only:
        report = json.loads(Path(args.out + ".json").read_text(encoding="utf-8"))
        Path(args.out + ".md").write_text(markdown(report), encoding="utf-8")
        return
    torch.set_num_threads(args.threads)
    started = time.time()
    timings: dict[str, float] = {}

    def tick(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        print(f"[{time.time() - started:7.1f}s] {name}: {timings[name]}s", flush=True)
        return time.time()

    data = Path(args.data) if args.data else (shared_data_dir() or Path("../shared/data")) / "hotpotqa_dev500"
    questions_file, beir = data / "dev_subsampled.jsonl", data / "beir"
    every = load_questions(questions_file, start=0, limit=500)
    chosen = spread(len(every), args.questions)
    every = [every[i] for i in chosen]
    if args.split == "interleaved":
        train_q, test_q = every[0::2], every[1::2]
    else:
        train_q, test_q = every[: len(every) // 2], every[len(every) // 2 :]
    mix = {"train": question_mix(train_q), "held_out": question_mix(test_q)}
    print("question mix:", mix, flush=True)
    qrels = load_qrels(beir / "qrels" / "test.tsv")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    t = time.time()
    corpus: Path = beir
    base_path = Path(args.base_index)
    if args.questions < 500:
        corpus = restricted_corpus(questions_file, beir, set(chosen), work / f"corpus_{args.questions}.jsonl")
        base_path = base_path.with_name(f"{base_path.name}-q{args.questions}")
    if not (base_path / "manifest.json").exists():
        build_dense_index(iter_documents(corpus), Encoder(EncoderConfig(model=MINILM)), base_path, quiet=True)
    base = Index.load(base_path)
    t = tick("base index (cached when present)", t)

    rows: list[dict] = []
    rows += evaluate_setting("MiniLM (base)", base, test_q, qrels, "{query}", work / "before_plain.jsonl")
    rows += evaluate_setting("MiniLM (base)", base, test_q, qrels, SEP, work / "before_sep.jsonl")
    t = tick("evaluate base on held-out", t)

    agent = SearchAgent(HeuristicPolicy(), IndexRetriever(base), AgentConfig(batch_size=DEFAULT_BATCH_SIZE))
    trajectories = agent.run(train_q)
    write_trajectories(work / "train_trajectories.jsonl", trajectories)
    t = tick("agent on training questions", t)

    label_config = LabelConfig(local="embedder", global_utility=args.global_utility, min_local=args.min_local, negatives=args.negatives)
    pairs, stats = label(trajectories, IndexRetriever(base), label_config, agent=agent, index=base)
    write_pairs(work / "pairs.jsonl", pairs)
    print("labelling:", stats, flush=True)
    t = tick("label", t)

    train_config = RetrieverTrainConfig(base_model=MINILM, query_prefix="", passage_prefix="",
                                        batch_size=args.batch_size, max_length=args.max_length,
                                        hard_negatives=args.hard_negatives, epochs=args.epochs)  # fmt: skip
    model_dir = train_retriever(pairs, train_config, work / "retriever", overwrite=True, quiet=False)
    t = tick("train retriever", t)
    trained = Index.load(reindex(corpus, model_dir, work / "index", train_config, overwrite=True))
    t = tick("re-index corpus", t)

    rows += evaluate_setting("Agentic-R MiniLM", trained, test_q, qrels, SEP, work / "after_sep.jsonl")
    rows += evaluate_setting("Agentic-R MiniLM", trained, test_q, qrels, "{query}", work / "after_plain.jsonl")
    tick("evaluate trained on held-out", t)
    timings["total"] = round(time.time() - started, 1)
    report = {"label_stats": stats, "pairs": len(pairs), "rows": rows, "timings_s": timings, "question_mix": mix,
              "corpus_size": len(base),
              "settings": {**vars(args), "label": label_config.model_dump(), "train": train_config.model_dump()},
              "notes": NOTES}  # fmt: skip
    Path(args.out + ".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    Path(args.out + ".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def spread(total: int, n: int) -> list[int]:
    """`n` file positions spread evenly over `total` (all of them when n >= total)."""
    return list(range(total)) if n >= total else sorted({i * total // n for i in range(n)})


def restricted_corpus(questions_file: Path, beir: Path, positions: set[int], out: Path) -> Path:
    """The BEIR corpus cut to the paragraphs (supporting and distractor) of the questions at `positions`."""
    keep: set[tuple[str, str]] = set()
    with questions_file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle):
            if line_no not in positions:
                continue
            keep.update((c["title"], c["paragraph_text"]) for c in json.loads(line)["contexts"])
    with (beir / "corpus.jsonl").open(encoding="utf-8") as handle, out.open("w", encoding="utf-8") as sink:
        for line in handle:
            doc = json.loads(line)
            if (doc.get("title", ""), doc.get("text", "")) in keep:
                sink.write(line)
    return out


def question_mix(questions) -> dict[str, int]:
    """How many yes/no answers and 'X or Y' questions (HotpotQA comparison questions) a split holds."""
    yes_no = sum(any(a.strip().lower() in ("yes", "no") for a in q.answers) for q in questions)
    either = sum(" or " in q.question for q in questions)
    return {"questions": len(questions), "yes/no answers": yes_no, "'X or Y' questions": either}


def evaluate_setting(name: str, index: Index, questions, qrels, template: str, out: Path) -> list[dict]:
    """Retriever-only Recall@k for the question, then the agent end to end."""
    held = {q.id: q for q in questions}
    queries = {q.id: template.format(question=q.question, query=q.question) for q in questions}
    run = index.search_run(queries, k=max(K_VALUES))
    metrics = evaluate(run, {qid: qrels[qid] for qid in held}, k_values=K_VALUES)
    agent = SearchAgent(HeuristicPolicy(), IndexRetriever(index), AgentConfig(query_template=template, batch_size=DEFAULT_BATCH_SIZE))
    trajectories = agent.run(questions)
    write_trajectories(out, trajectories)
    summary = summarize(trajectories)
    recall, both = [], []
    for trajectory in trajectories:
        gold = set(qrels[trajectory.id])
        found = gold & set(trajectory.retrieved_ids())
        recall.append(len(found) / len(gold))
        both.append(float(found == gold))
    row = {"retriever": name, "query template": template,
           **{f"R@{k}": round(metrics[f"Recall@{k}"], 4) for k in K_VALUES},
           "agent SP recall": round(sum(recall) / len(recall), 4), "agent both SP": round(sum(both) / len(both), 4),
           "EM": round(summary["EM"], 4), "F1": round(summary["F1"], 4)}  # fmt: skip
    print(row, flush=True)
    return [row]


def markdown(report: dict) -> str:
    rows = report["rows"]
    header = list(rows[0])
    s = report["settings"]
    split = s.get("split", "halves")
    n = s.get("questions", 500)
    held = "every second question (interleaved split)" if split == "interleaved" else "the second half (halves split)"
    scope = "" if n == 500 else f"; {n} questions spread over the file and their {report.get('corpus_size', '?')} paragraphs"
    lines = [f"# Agentic-R on HotpotQA dev500 ({n // 2} held-out questions: {held}{scope}; CPU)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    trained_on = "the other questions (1st, 3rd, … in file order)" if split == "interleaved" else "the first half"
    lines += ["", f"Labelling on {trained_on} (global utility: {s['global_utility']}, local: embedder cosine, "
              f"min local {s['min_local']}, {s.get('negatives', 15)} negatives): {report['label_stats']}; "
              f"{report['pairs']} training pairs.",
              f"Question mix: {report.get('question_mix', 'not recorded')}.",
              "R@k: retriever alone, the question as query (through the template). Agent SP recall: share of the two "
              "supporting paragraphs among all passages the deterministic agent was shown (2 searches × top-3); "
              "agent both SP: share of questions with both found. EM/F1: the agent's answers.",
              f"Timings (s; a shared, loaded 2-core machine): {report['timings_s']}", "",
              "Notes:"]  # fmt: skip
    lines += report.get("notes") or NOTES
    lines += ["", "Produced by `benchmarks/agentic_r_hotpotqa.py`."]
    return "\n".join(lines) + "\n"


NOTES = [
    "- Changed since the previous run (first-250 / last-250 split of all 500 questions, 99 pairs; base R@2 0.706 → "
    "trained 0.718 with [SEP], EM 0.32 → 0.324): (1) the split is interleaved, so training and held-out questions "
    "mix bridge and comparison questions alike (before: 1 vs 82 yes/no answers; now 11 vs 22, see the mix above); "
    "(2) pairs follow the official rules: every candidate tied with the best is kept out of the negatives, steps "
    "with fewer than 15 other candidates are skipped, and rows are no longer all cut to the smallest negative count; "
    "(3) round-1 candidates are retrieved with the plain query the agent sent, not '{question} [SEP] {query}'; "
    "(4) to fit the CPU budget this run uses 200 questions spread evenly over the file (100 label, 100 held out) "
    "and only their 1,954 paragraphs, so the base numbers differ from the previous table's (other held-out "
    "questions, a smaller corpus) and are not comparable with it.",
    "- Why the trained retriever barely moves: 100 training questions give 33 pairs (66 rows, 6 optimizer steps); "
    "steps are mostly skipped because no candidate contains the answer (81) or the best one's cosine is below 0.6 "
    "(86). After training, R@20 with [SEP] goes 0.93 → 0.95 (2 questions) and everything else moves by at most 0.01 "
    "(one question, or two paragraphs) — within noise. The full-size run (`nice -n 19 .venv/bin/python "
    "benchmarks/agentic_r_hotpotqa.py`, 250/250 questions, 4,858 paragraphs) has 2.5 times the training questions; it did "
    "not fit this session's CPU time (the 200-question run took 26 minutes on a machine at load ≈ 14).",
    "- No LLM anywhere: global utility is answer containment and local utility the embedder's cosine (the "
    "documented proxies); the deterministic agent answers yes/no questions 'yes', so EM also reflects that rule.",
    "- To bound CPU time, rows keep the first 3 (hardest) of their 15 negatives and training inputs are cut to "
    "64 tokens (in-batch negatives as usual); the method's setting is `--hard-negatives 15 --max-length 256`.",
    "- One run, one seed, 100 held-out questions (R@k moves by 0.01 per question found or lost): differences of "
    "a few points are within noise.",
]


if __name__ == "__main__":
    main()
