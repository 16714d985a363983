"""Retrieval metrics with trec_eval semantics (pytrec_eval).

    >>> evaluate({"q1": {"d1": 2.0, "d2": 1.0}}, {"q1": {"d2": 1}}, k_values=(10,))
    {'nDCG@10': 0.63093, 'Recall@10': 1.0, 'MRR@10': 0.5, 'P@10': 0.1, 'MAP': 0.5, 'queries': 1}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, overload

from embedkit.data.qrels import Qrels
from embedkit.data.runs import Run, ranked
from embedkit.errors import EmbedkitError

DEFAULT_K = (1, 3, 5, 10, 100, 1000)
MAX_K = 2**31 - 1  # trec_eval's cut-offs are C longs; pytrec_eval drops larger ones (a KeyError here)


def check_overlap(run: Run, qrels: Qrels) -> None:
    """Refuse to score a run against qrels that share no ids with it: that is always an id mix-up."""
    shared_queries = set(run) & set(qrels)
    if not shared_queries:
        raise EmbedkitError(
            f"no query id of the qrels appears in the run (qrels: {_sample(qrels)}; run: {_sample(run)}); "
            "are they from the same dataset and split?"
        )
    judged = {doc for query in shared_queries for doc in qrels[query]}
    retrieved = {doc for query in shared_queries for doc in run[query]}
    if judged and not (judged & retrieved):
        raise EmbedkitError(
            f"none of the {len(judged)} judged document ids appears in the run (qrels: {_sample(judged)}; "
            f"run: {_sample(retrieved)}); do the document ids come from the same corpus?"
        )


def _sample(ids) -> str:
    items = sorted(ids)[:3]
    return ", ".join(repr(item) for item in items) + (", …" if len(ids) > 3 else "")


@overload
def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Qrels, k_values: Sequence[int] = ...,
             *, per_query: Literal[False] = ...) -> dict[str, float]: ...


@overload
def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Qrels, k_values: Sequence[int] = ...,
             *, per_query: Literal[True]) -> tuple[dict[str, float], dict[str, dict[str, float]]]: ...


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    k_values: Sequence[int] = DEFAULT_K,
    *,
    per_query: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG@k, Recall@k, P@k, MRR@k and MAP, averaged over the queries that are both judged and run.

    MRR@k is trec_eval's reciprocal rank on the run cut at k (trec_eval's `recip_rank` is uncut).
    """
    import pytrec_eval

    plain: Run = {query: dict(scores) for query, scores in run.items()}
    check_overlap(plain, qrels)
    k_values = sorted(set(k_values))
    if not k_values or not all(isinstance(k, int) and 1 <= k <= MAX_K for k in k_values):
        raise EmbedkitError(f"cut-offs k must be whole numbers from 1 to {MAX_K}, got {list(k_values)}")
    measures = {"map", f"ndcg_cut.{','.join(map(str, k_values))}", f"recall.{','.join(map(str, k_values))}",
                f"P.{','.join(map(str, k_values))}"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(plain)
    rr_by_k = {}
    for k in k_values:
        cut = {query: dict(ranked(docs)[:k]) for query, docs in plain.items()}
        rr_by_k[k] = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)

    table: dict[str, dict[str, float]] = {}
    for query, values in scores.items():
        row = {}
        for k in k_values:
            row[f"nDCG@{k}"] = values[f"ndcg_cut_{k}"]
            row[f"Recall@{k}"] = values[f"recall_{k}"]
            row[f"P@{k}"] = values[f"P_{k}"]
            row[f"MRR@{k}"] = rr_by_k[k].get(query, {}).get("recip_rank", 0.0)
        row["MAP"] = values["map"]
        table[query] = row
    names = [f"{metric}@{k}" for metric in ("nDCG", "Recall", "MRR", "P") for k in k_values] + ["MAP"]
    mean = {name: round(sum(row[name] for row in table.values()) / len(table), 5) for name in names}
    mean["queries"] = len(table)
    return (mean, table) if per_query else mean


def format_metrics(metrics: Mapping[str, float], k_values: Sequence[int] = (10, 100)) -> str:
    """A compact two-column table of the usual headline metrics."""
    lines = []
    k_values = list(dict.fromkeys(k_values))  # `--k 10 10` shows each metric once
    for name in [f"nDCG@{k}" for k in k_values] + [f"Recall@{k}" for k in k_values] + [f"MRR@{k}" for k in k_values] + ["MAP"]:
        if name in metrics:
            lines.append(f"{name:<12} {metrics[name]:.4f}")
    if "queries" in metrics:
        lines.append(f"{'queries':<12} {int(metrics['queries'])}")
    return "\n".join(lines)
