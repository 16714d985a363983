"""Metrics against hand-computed values, with trec_eval semantics."""

from __future__ import annotations

import math

import pytest

from embedkit.errors import EmbedkitError
from embedkit.eval import evaluate


def test_metrics_match_hand_computation() -> None:
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d9": 2.0, "d4": 1.0}}
    qrels = {"q1": {"d2": 1, "d3": 2}, "q2": {"d4": 1}}
    metrics, per_query = evaluate(run, qrels, k_values=(1, 2, 3), per_query=True)
    # q1: gains at ranks 2, 3 = 1, 2; ideal order 2, 1.
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert per_query["q1"]["nDCG@3"] == pytest.approx(dcg / idcg, abs=1e-6)
    assert per_query["q1"]["MRR@1"] == 0.0 and per_query["q1"]["MRR@2"] == 0.5
    assert per_query["q1"]["Recall@2"] == 0.5 and per_query["q1"]["Recall@3"] == 1.0
    assert per_query["q1"]["MAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert per_query["q2"]["MRR@2"] == 0.5 and per_query["q2"]["MRR@1"] == 0.0
    assert metrics["MRR@2"] == pytest.approx(0.5) and metrics["queries"] == 2


def test_qrels_that_match_nothing_are_refused() -> None:
    with pytest.raises(EmbedkitError, match="no query id of the qrels appears in the run"):
        evaluate({"q1": {"d1": 1.0}}, {"other": {"d1": 1}})
    with pytest.raises(EmbedkitError, match="judged document ids appears in the run"):
        evaluate({"q1": {"d1": 1.0}}, {"q1": {"zzz": 1}})
