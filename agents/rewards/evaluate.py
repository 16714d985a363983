"""Reward-model evaluation on preference pairs: accuracy, flip rate and position bias, per subset.

Every pair is judged twice: chosen shown first (as A) and chosen shown second (as B). Per group of pairs:

- `accuracy`: judgements that pick the chosen response / all judgements (2 per pair). Ties and unreadable
  verdicts are not correct; they are counted in `ties` and `invalid`, never scored as a coin flip;
- `acc_chosen_first`, `acc_chosen_second`: the same accuracy for each presentation order, and
  `position_bias_gap` = acc_chosen_first − acc_chosen_second (positive: the judge favours position A);
- `flip_rate`: pairs whose preferred response changes when the order is swapped (a tie counts as a verdict),
  over the pairs with both verdicts readable (`flip_pairs`);
- `both_correct`: pairs judged right in both orders (RewardBench-style consistent accuracy);
- `net_accuracy`: JudgeBench's score (`utils/metrics.py`, `compute_final_metrics` with both orders): a pair
  counts when its two verdicts net in favour of the chosen response (+1 per verdict for it, −1 per verdict
  against it); one right and one wrong verdict is a tie, one right and one tie or unreadable verdict counts;
- `decided_accuracy`: correct / judgements with an A or B verdict (for reference only);
- `bon_accuracy` (RMB Best-of-N, pairs with a `group`): groups whose best response beats every loser, per
  presentation order, over groups × 2.

With RewardBench subsets among the pairs, `rewardbench` holds the leaderboard score next to the plain accuracy:
each section (Chat, Chat Hard, Safety, Reasoning) is the mean of its subsets' accuracies weighted by upstream's
per-subset example counts (`rewardbench/constants.py` EXAMPLE_COUNTS; math-prm counted 984 times, "upweighting
to be equal to code"); the prior sets (anthropic_helpful, anthropic_hhh, shp, summarize) are averaged
unweighted, and the score weights the four sections 2 each and the prior sets 1, sections without any subset
left out (`analysis/get_benchmark_results.py`, `get_average_over_rewardbench`).

    report = evaluate_pairs(load_pairs("pairs.jsonl"), build_judge("pairwise", llm))
    print(report.table())
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.rewards.judges import JudgeItem, JudgeOutput, PairwiseJudge
from agents.rewards.pairs import PreferencePair


@dataclass
class PairJudgement:
    """Both judgements of one pair, mapped to "chosen" / "rejected" / "tie" / None."""

    pair: PreferencePair
    first: JudgeOutput  # chosen shown as A
    second: JudgeOutput  # chosen shown as B

    @property
    def outcome_first(self) -> str | None:
        return _outcome(self.first.verdict, chosen_is="A")

    @property
    def outcome_second(self) -> str | None:
        return _outcome(self.second.verdict, chosen_is="B")


def _outcome(verdict: str | None, chosen_is: str) -> str | None:
    if verdict in (None, "tie"):
        return verdict
    return "chosen" if verdict == chosen_is else "rejected"


@dataclass
class GroupStats:
    pairs: int = 0
    judgements: int = 0
    correct: int = 0
    correct_first: int = 0
    correct_second: int = 0
    ties: int = 0
    invalid: int = 0
    flips: int = 0
    flip_pairs: int = 0
    both_correct: int = 0
    net_correct: int = 0
    says_a: int = 0  # readable A/B verdicts that name position A

    def add(self, j: PairJudgement) -> None:
        self.pairs += 1
        self.judgements += 2
        first, second = j.outcome_first, j.outcome_second
        self.correct_first += first == "chosen"
        self.correct_second += second == "chosen"
        self.correct += (first == "chosen") + (second == "chosen")
        self.both_correct += first == "chosen" and second == "chosen"
        self.net_correct += (first == "chosen") + (second == "chosen") - (first == "rejected") - (second == "rejected") > 0
        for out in (j.first, j.second):
            self.ties += out.verdict == "tie"
            self.invalid += out.verdict is None
            self.says_a += out.verdict == "A"
        if first is not None and second is not None:
            self.flip_pairs += 1
            self.flips += first != second

    def summary(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        decided = self.judgements - self.ties - self.invalid
        acc_first, acc_second = ratio(self.correct_first, self.pairs), ratio(self.correct_second, self.pairs)
        return {
            "pairs": self.pairs,
            "accuracy": ratio(self.correct, self.judgements),
            "acc_chosen_first": acc_first,
            "acc_chosen_second": acc_second,
            "position_bias_gap": None if acc_first is None or acc_second is None else acc_first - acc_second,
            "flip_rate": ratio(self.flips, self.flip_pairs),
            "flip_pairs": self.flip_pairs,
            "both_correct": ratio(self.both_correct, self.pairs),
            "net_accuracy": ratio(self.net_correct, self.pairs),
            "decided_accuracy": ratio(self.correct, decided),
            "ties": self.ties,
            "invalid": self.invalid,
            "a_rate": ratio(self.says_a, decided),
            "judgements": self.judgements,
        }


# allenai/reward-bench rewardbench/constants.py
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46, "xstest-should-refuse": 250, "xstest-should-respond": 154, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip
REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}  # fmt: skip
REWARDBENCH_PRIOR_SETS = ["anthropic_helpful", "anthropic_hhh", "shp", "summarize"]
PRIOR_SETS = "Prior Sets (0.5 weight)"


def rewardbench_score(subsets: dict[str, dict[str, Any]], plain_accuracy: float | None) -> dict[str, Any] | None:
    """RewardBench's section scores and leaderboard score from per-subset accuracies (None: no RewardBench
    subset among them)."""
    acc = {name: s["accuracy"] for name, s in subsets.items() if s.get("accuracy") is not None}
    sections: dict[str, float] = {}
    for section, names in REWARDBENCH_SECTIONS.items():
        present = [n for n in names if n in acc]
        if present:
            total = sum(REWARDBENCH_COUNTS[n] for n in present)
            sections[section] = sum(acc[n] * REWARDBENCH_COUNTS[n] for n in present) / total
    prior = [acc[n] for n in REWARDBENCH_PRIOR_SETS if n in acc]
    if prior:
        sections[PRIOR_SETS] = sum(prior) / len(prior)
    if not sections:
        return None
    weights = {name: 1.0 if name == PRIOR_SETS else 2.0 for name in sections}
    score = sum(sections[n] * weights[n] for n in sections) / sum(weights.values())
    known = [n for names in REWARDBENCH_SECTIONS.values() for n in names] + REWARDBENCH_PRIOR_SETS
    return {"score": score, "plain_accuracy": plain_accuracy, "sections": sections,
            "missing_subsets": [n for n in known if n not in acc]}  # fmt: skip


def bon_accuracy(judgements: Sequence[PairJudgement]) -> dict[str, Any] | None:
    """RMB's Best-of-N accuracy over the pairs that carry a `group`: per presentation order, a group counts when
    the best response wins against every loser."""
    groups: dict[str, list[PairJudgement]] = {}
    for j in judgements:
        if j.pair.group:
            groups.setdefault(j.pair.group, []).append(j)
    if not groups:
        return None
    wins = sum(all(j.outcome_first == "chosen" for j in g) + all(j.outcome_second == "chosen" for j in g)
               for g in groups.values())  # fmt: skip
    return {"groups": len(groups), "bon_accuracy": wins / (2 * len(groups))}


@dataclass
class EvalReport:
    judge: str
    overall: dict[str, Any]
    subsets: dict[str, dict[str, Any]]
    tags: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # e.g. difficulty → hard → stats
    meta: dict[str, Any] = field(default_factory=dict)
    rewardbench: dict[str, Any] | None = None  # section-weighted score next to the plain accuracy
    bon: dict[str, Any] | None = None  # RMB Best-of-N accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def table(self) -> str:
        """A Markdown table: one row per subset (and per tag value), then the overall row."""
        head = "| group | pairs | accuracy | acc (chosen 1st) | acc (chosen 2nd) | bias gap | flip rate | ties | invalid |"
        rows = [head, "|" + " --- |" * 9]

        def fmt(x: float | None, signed: bool = False) -> str:
            return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")

        def row(name: str, s: dict[str, Any]) -> str:
            return (f"| {name} | {s['pairs']} | {fmt(s['accuracy'])} | {fmt(s['acc_chosen_first'])} | "
                    f"{fmt(s['acc_chosen_second'])} | {fmt(s['position_bias_gap'], True)} | {fmt(s['flip_rate'])} | "
                    f"{s['ties']} | {s['invalid']} |")  # fmt: skip

        rows += [row(name, s) for name, s in self.subsets.items()]
        for tag, values in self.tags.items():
            rows += [row(f"{tag}={value}", s) for value, s in values.items()]
        rows.append(row("**overall**", self.overall))
        if self.bon is not None:
            rows.append(f"\nRMB Best-of-N accuracy: {self.bon['bon_accuracy']:.3f} over {self.bon['groups']} groups")
        if self.rewardbench is not None:
            rb = self.rewardbench
            parts = ", ".join(f"{name} {value:.3f}" for name, value in rb["sections"].items())
            rows.append(f"\nRewardBench score (section-weighted): {rb['score']:.3f}; plain accuracy: "
                        f"{fmt(rb['plain_accuracy'])}; {parts}"
                        + (f" ({len(rb['missing_subsets'])} subsets absent)" if rb["missing_subsets"] else ""))  # fmt: skip
        return "\n".join(rows)


def judge_pairs(pairs: Sequence[PreferencePair], judge: PairwiseJudge, *, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> list[PairJudgement]:  # fmt: skip
    """Judge every pair in both orders, `batch_size` judgements per judge call."""
    items: list[JudgeItem] = []
    for p in pairs:
        items += [JudgeItem(p.prompt, p.chosen, p.rejected), JudgeItem(p.prompt, p.rejected, p.chosen)]
    outputs: list[JudgeOutput] = []
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start : start + max(1, batch_size)]
        got = judge.judge(chunk)
        if len(got) != len(chunk):
            raise RuntimeError(f"judge returned {len(got)} verdicts for {len(chunk)} items")
        outputs += got
        if progress is not None:
            progress(len(chunk))
    return [PairJudgement(p, outputs[2 * k], outputs[2 * k + 1]) for k, p in enumerate(pairs)]


def summarize(judgements: Sequence[PairJudgement], judge_name: str, meta: dict[str, Any] | None = None) -> EvalReport:
    overall = GroupStats()
    subsets: dict[str, GroupStats] = {}
    tags: dict[str, dict[str, GroupStats]] = {}
    for j in judgements:
        overall.add(j)
        subsets.setdefault(j.pair.subset, GroupStats()).add(j)
        for tag, value in j.pair.tags.items():
            if tag == "styles":  # nine values per RM-Bench item: reported through difficulty instead
                continue
            tags.setdefault(tag, {}).setdefault(value, GroupStats()).add(j)
    subset_stats = {name: s.summary() for name, s in sorted(subsets.items())}
    overall_stats = overall.summary()
    return EvalReport(
        judge=judge_name,
        overall=overall_stats,
        subsets=subset_stats,
        tags={tag: {v: s.summary() for v, s in sorted(values.items())} for tag, values in tags.items()},
        meta=dict(meta or {}),
        rewardbench=rewardbench_score(subset_stats, overall_stats["accuracy"]),
        bon=bon_accuracy(judgements),
    )


def evaluate_pairs(pairs: Sequence[PreferencePair], judge: PairwiseJudge, *, judge_name: str = "judge",
                   batch_size: int = 32, meta: dict[str, Any] | None = None) -> EvalReport:  # fmt: skip
    return summarize(judge_pairs(pairs, judge, batch_size=batch_size), judge_name, meta)


def write_judgements(path: str | Path, judgements: Sequence[PairJudgement]) -> Path:
    """Every judgement with its raw text, one pair per line (atomically)."""
    from embedkit.io import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        for j in judgements:
            record = {"id": j.pair.id, "subset": j.pair.subset,
                      "chosen_first": {"verdict": j.first.verdict, "outcome": j.outcome_first, "text": j.first.text},
                      "chosen_second": {"verdict": j.second.verdict, "outcome": j.outcome_second, "text": j.second.text}}  # fmt: skip
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
