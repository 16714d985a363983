"""PPE's correctness sets (lmarena-ai/PPE-*-Best-of-K): the released row layout read from parquet and jsonl,
the metrics on rows where another reading of the definitions gives other numbers (expected values worked out
by hand below), best-of-K against a brute-force enumeration, `rewards ppe-correctness` and `rewards eval`
through the CLI, and clear errors for rows and reward files that cannot be read."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from agents.rewards.pairs import load_pairs
from agents.rewards.ppe import (
    CorrectnessRow,
    _row_best_of_k,
    correctness_metrics,
    load_correctness,
    load_rewards,
)
from embedkit.errors import DataFormatError
from tests.helpers import running_server
from tests.test_index_integrity import assert_user_error, embedkit
from tests.test_rewards_loaders import _judge_app

T, F = True, False
# Five rows of four responses (question q1..q5, sampled by model m). Rewards: q4's third response was not
# scored (null: ranks last); q3's responses are all correct (no pair); q5 is over-optimised (the top reward is
# wrong), so its best-of-K falls with K.
LABELS = {"q1": (T, F, F, T), "q2": (F, T, F, F), "q3": (T, T, T, T), "q4": (T, F, F, F), "q5": (F, T, F, F)}
REWARDS = {"q1": [3, 2, 2, 1], "q2": [1, 1, 0, 0.5], "q3": [0, 0, 0, 0], "q4": [2, 3, None, 0], "q5": [9, 8, 0, 0]}


def _rows(benchmark: str = "math") -> list[CorrectnessRow]:
    return [CorrectnessRow(f"{q}/m", benchmark, f"prompt {q}", tuple(f"{q} answer {i}" for i in range(4)), labels)
            for q, labels in LABELS.items()]


def _rewards() -> dict:
    return {f"{q}/m": r for q, r in REWARDS.items()}


def test_metrics_where_other_readings_give_other_numbers():
    report = correctness_metrics(_rows(), _rewards())["math"]
    # accuracy: per row, every (correct, incorrect) pair, equal rewards count 1/2; mean over rows with a pair.
    #   q1: (3>2, 3>2, 1<2, 1<2) = 2/4; q2: (1=1 -> 1/2, 1>0, 1>0.5) = 2.5/3; q4: (2<3, 2>-inf, 2>0) = 2/3;
    #   q5: (8<9, 8>0, 8>0) = 2/3; q3 has no pair.  (0.5 + 0.8333 + 0.6667 + 0.6667) / 4 = 0.666667.
    #   Pooling all pairs instead gives 8.5/13 = 0.6538; ties as wrong 0.625.
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["rows_with_pairs"] == 4
    # best_of_k[K]: expected correctness of the top reward among K responses drawn at random (ties at random).
    #   P(the maximum lies in a group of g tied responses with m above it) = (C(N-m, K) - C(N-m-g, K)) / C(N, K).
    #   q1 sorted 3(T) | 2,2(F,F) | 1(T): K=1..4 -> 0.5, 0.5, 0.75, 1;  q2: 1,1(F,T) | 0.5 | 0 -> 0.25, 5/12,
    #   0.5, 0.5;  q3 -> 1, 1, 1, 1;  q4: 3(F) | 2(T) | ... -> 0.25, 1/3, 0.25, 0;  q5 the same as q4.
    #   Mean over rows: 0.45, 0.516667, 0.55, 0.5 — it peaks at K=3, so the end score (K=4) is below the
    #   maximum achieved. Reading "best of the first K responses" instead would give 0.6 at K=1.
    assert report["best_of_k"] == pytest.approx([0.45, 31 / 60, 0.55, 0.5])
    assert report["end_score"] == pytest.approx(0.5) and report["max_achieved"] == pytest.approx(0.55)
    # A perfect reward model: 1 - C(N-c, K)/C(N, K): q1 (c=2) 0.5, 5/6, 1, 1; q2, q4, q5 (c=1) 0.25, 0.5,
    #   0.75, 1; q3 1s -> 0.45, 0.666667, 0.85, 1. loss = mean((0)^2, 0.15^2, 0.3^2, 0.5^2) = 0.090625.
    assert report["ground_truth_best_of_k"] == pytest.approx([0.45, 2 / 3, 0.85, 1.0])
    assert report["loss"] == pytest.approx(0.090625)
    # Row-wise Pearson (q3 constant: none; q4 without its unscored response): q1 0, q2 0.375/sqrt(0.75*0.6875)
    #   = 0.522233, q4 3/sqrt(252) = 0.188982, q5 3.75/sqrt(0.75*72.75) = 0.507673 -> mean 0.304722.
    assert report["row_pearson"] == pytest.approx((0 + 0.375 / math.sqrt(0.75 * 0.6875) + 3 / math.sqrt(252)
                                                   + 3.75 / math.sqrt(0.75 * 72.75)) / 4)  # fmt: skip
    # ROC AUC over all 20 responses (Mann-Whitney: correct above incorrect, ties 1/2, the null lowest).
    flat = [(c, -math.inf if r is None else r) for q in LABELS for c, r in zip(LABELS[q], REWARDS[q], strict=True)]
    good, bad = [r for c, r in flat if c], [r for c, r in flat if not c]
    expected = sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / (len(good) * len(bad))
    assert report["auc"] == pytest.approx(expected)


def _brute_best_of_k(labels, rewards, k):
    """Every k-subset, every order of tied rewards: the mean correctness of the one picked first."""
    total = count = 0.0
    for subset in itertools.combinations(range(len(labels)), k):
        top = max(rewards[i] for i in subset)
        tied = [i for i in subset if rewards[i] == top]
        total += sum(labels[i] for i in tied) / len(tied)
        count += 1
    return total / count


def test_best_of_k_is_exact_over_subsets_and_ties():
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(2, 7)
        labels = [rng.random() < 0.4 for _ in range(n)]
        rewards = [float(rng.randint(0, 3)) for _ in range(n)]  # many ties
        for k in range(1, n + 1):
            assert _row_best_of_k(labels, rewards, k) == pytest.approx(_brute_best_of_k(labels, rewards, k))


def _released_rows(extra: dict | None = None) -> list[dict]:
    """Rows as lmarena-ai/PPE-GPQA-Best-of-K stores them (its own columns beside the shared ones)."""
    rows = []
    for q, labels in LABELS.items():
        row = {"question_id": q, "Question": f"question {q}", "choices": ["a", "b"], "correct_choice_index": 0,
               "model_name": "m", "parsed_outputs": ["a"] * 4, "scores": list(labels),
               "mean_score": sum(labels) / 4, "prompt": f"prompt {q}"}  # fmt: skip
        for i in range(4):
            row[f"response_{i + 1}"] = f"GOOD {q} {i}" if labels[i] else f"{q} {i}"
        rows.append({**row, **(extra or {})})
    return rows


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path):
    math_file = _write_parquet(tmp_path / "ppe_math.parquet", _released_rows())
    gpqa_file = _write_jsonl(tmp_path / "PPE-GPQA-Best-of-K.jsonl", _released_rows())
    rewards = _write_jsonl(tmp_path / "rewards.jsonl", [{"id": f"{q}/m", "rewards": r} for q, r in REWARDS.items()])
    return math_file, gpqa_file, rewards


def test_loader_reads_the_released_layout(files):
    math_file, gpqa_file, _ = files
    rows = load_correctness(math_file)
    assert [r.id for r in rows] == ["q1/m", "q2/m", "q3/m", "q4/m", "q5/m"]
    assert {r.benchmark for r in rows} == {"math"} and {r.benchmark for r in load_correctness(gpqa_file)} == {"gpqa"}
    assert rows[1].correct == LABELS["q2"] and rows[1].responses[1] == "GOOD q2 1" and rows[1].prompt == "prompt q2"
    # A pairwise judge sees one pair per row: the first correct response against the first incorrect one.
    pairs = load_pairs(math_file)
    assert [p.id for p in pairs] == ["q1/m", "q2/m", "q4/m", "q5/m"]  # q3: all correct, no pair
    assert pairs[0].chosen == "GOOD q1 0" and pairs[0].rejected == "q1 1" and pairs[0].subset == "ppe_math"
    assert pairs[1].chosen == "GOOD q2 1" and pairs[1].rejected == "q2 0"


@pytest.mark.slow  # subprocesses
def test_ppe_correctness_command(files, tmp_path):
    math_file, gpqa_file, rewards = files
    out = tmp_path / "report.json"
    result = embedkit("rewards", "ppe-correctness", "--data", math_file, "--data", gpqa_file, "--rewards", rewards,
                      "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    for name in ("math", "gpqa"):  # the same rows under two benchmarks: the same numbers as above
        assert report[name]["accuracy"] == pytest.approx(2 / 3)
        assert report[name]["best_of_k"] == pytest.approx([0.45, 31 / 60, 0.55, 0.5])
    assert report["mean"]["loss"] == pytest.approx(0.090625)
    assert "| math | 5 | 0.6667 | 0.5000 | 0.5500 | 0.0906 |" in result.stdout


@pytest.mark.slow
def test_rewards_eval_judges_one_pair_per_row(files, tmp_path):
    math_file, _, _ = files
    out = tmp_path / "report.json"
    with running_server(_judge_app()) as url:  # the judge prefers the response that says GOOD
        result = embedkit("rewards", "eval", "--pairs", math_file, "--judge", "pairwise", "--llm", f"openai:{url}",
                          "--llm-model", "judge", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["overall"]["pairs"] == 4 and report["overall"]["accuracy"] == 1.0
    assert set(report["subsets"]) == {"ppe_math"}


def test_unreadable_rows_and_rewards_are_refused(files, tmp_path):
    math_file, _, rewards = files
    short = _released_rows()
    del short[2]["response_4"]
    with pytest.raises(DataFormatError, match=r"short.jsonl, line 3: .*response_4 is missing"):
        load_correctness(_write_jsonl(tmp_path / "short.jsonl", short))
    rows = load_correctness(math_file)
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"id": "q1/m", "rewards": [1, 2, 3, 4]}])
    with pytest.raises(DataFormatError, match=r"missing.jsonl: no rewards for row 'q2/m'"):
        correctness_metrics(rows, load_rewards(missing), rewards_path=missing)
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"id": "q1/m", "rewards": [1, "high", 3, 4]}])
    with pytest.raises(DataFormatError, match=r"wrong.jsonl, line 1: 'rewards' must be"):
        load_rewards(wrong)
    three = _write_jsonl(tmp_path / "three.jsonl", [{"id": f"{q}/m", "rewards": [0, 1, 2]} for q in LABELS])
    with pytest.raises(DataFormatError, match=r"row 'q1/m' has 4 responses but 3 rewards"):
        correctness_metrics(rows, load_rewards(three), rewards_path=three)


@pytest.mark.slow  # subprocesses
def test_the_command_refuses_in_one_line(files, tmp_path):
    _, _, rewards = files
    # A fifth response with four labels is never dropped silently.
    extra = _write_parquet(tmp_path / "ppe_mbpp_plus.parquet", _released_rows({"response_5": "x"}))
    result = embedkit("rewards", "ppe-correctness", "--data", extra, "--rewards", rewards)
    assert_user_error(result, "ppe_mbpp_plus.parquet, line 1", "response_5", "'scores'")
    # A hub set that cannot be reached (no network here) is one clear line, not a traceback.
    result = embedkit("rewards", "ppe-correctness", "--data", "math", "--rewards", rewards,
                      env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})  # fmt: skip
    assert_user_error(result, "lmarena-ai/PPE-MATH-Best-of-K", "cannot load the hub dataset")
