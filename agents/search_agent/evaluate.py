"""QA scores the way Search-R1 and FlashRAG report them: EM, F1 and sub-EM per `data_source` and overall.

Answers are normalised as in the SQuAD / Search-R1 / FlashRAG scripts (lower case, ASCII punctuation and the
articles a/an/the removed, whitespace collapsed); a prediction scores its best match over the accepted answers.

- EM: 1 when the normalised prediction equals a normalised answer.
- F1: token-level F1 (max over answers); yes / no / noanswer count only when they match exactly.
- sub-EM (Search-R1's `subem`, FlashRAG's `acc`): 1 when a normalised answer occurs inside the prediction.

A question without a prediction (no `<answer>`) scores 0; a question without accepted answers is not scored.

    report = evaluate(trajectories)
    report["overall"]["em"], report["by_source"]["nq"]["f1"]
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.rl.rewards import exact_match_score, f1_score, normalize_answer
from agents.search_agent.trajectory import Trajectory


def sub_em_score(prediction: str | None, answers: Sequence[str]) -> float:
    """1.0 when some normalised answer is a substring of the normalised prediction."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) in pred for a in answers if normalize_answer(a)))


def score(trajectory: Trajectory) -> Trajectory:
    """Fill `em` / `f1` / `sub_em` from the prediction (None when the question has no accepted answers)."""
    if not trajectory.answers:
        trajectory.em = trajectory.f1 = trajectory.sub_em = None
    else:
        trajectory.em = exact_match_score(trajectory.prediction, trajectory.answers)
        trajectory.f1 = f1_score(trajectory.prediction, trajectory.answers)
        trajectory.sub_em = sub_em_score(trajectory.prediction, trajectory.answers)
    return trajectory


def _aggregate(trajectories: Sequence[Trajectory]) -> dict[str, float | int | None]:
    scored = [t for t in trajectories if t.em is not None]

    def mean(name: str) -> float | None:
        return sum(getattr(t, name) or 0.0 for t in scored) / len(scored) if scored else None

    return {"questions": len(trajectories), "scored": len(scored), "em": mean("em"), "f1": mean("f1"),
            "sub_em": mean("sub_em"),
            "answered": sum(t.status == "answered" for t in trajectories) / max(len(trajectories), 1),
            "searches_mean": sum(len(t.searches) for t in trajectories) / max(len(trajectories), 1)}  # fmt: skip


def evaluate(trajectories: Sequence[Trajectory]) -> dict:
    """{"overall": metrics, "by_source": {data_source: metrics}}; scores trajectories not scored yet."""
    for trajectory in trajectories:
        if trajectory.answers and trajectory.em is None:
            score(trajectory)
    by_source: dict[str, list[Trajectory]] = {}
    for trajectory in trajectories:
        by_source.setdefault(trajectory.data_source or "unknown", []).append(trajectory)
    return {"overall": _aggregate(trajectories),
            "by_source": {source: _aggregate(group) for source, group in sorted(by_source.items())}}  # fmt: skip


def format_report(report: dict) -> str:
    """A fixed-width table: one row per data source, then the overall row."""

    def cell(value: float | None) -> str:
        return "   n/a" if value is None else f"{100 * value:6.2f}"

    rows = [f"{'data_source':<24} {'n':>6} {'EM':>6} {'F1':>6} {'subEM':>6}"]
    for source, metrics in [*report["by_source"].items(), ("overall", report["overall"])]:
        rows.append(f"{source[:24]:<24} {metrics['scored']:>6} {cell(metrics['em'])} {cell(metrics['f1'])} "
                    f"{cell(metrics['sub_em'])}")  # fmt: skip
    return "\n".join(rows)
