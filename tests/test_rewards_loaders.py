"""`embedkit rewards eval` (a subprocess) on files in JudgeBench's, RMB's and PPE's released layouts and on
RewardBench subsets, against a real OpenAI-compatible server whose judge prefers the response that says GOOD:
every pair is read, the right response is the chosen one, RMB's Best-of-N accuracy and RewardBench's
section-weighted score are reported next to the plain accuracy."""

from __future__ import annotations

import json
import re

import pytest
from fastapi import FastAPI, Request

from tests.helpers import running_server
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow  # subprocesses


def _judge_app():
    """Picks the response containing GOOD (position A when both or neither do)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        a, b = re.search(r"Response A: (.*)\n\nResponse B: (.*)", prompt, re.S).groups()
        verdict = "B" if "GOOD" in b and "GOOD" not in a else "A"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"<verdict>{verdict}</verdict>"}}]}

    return app


@pytest.fixture(scope="module")
def judge_url():
    with running_server(_judge_app()) as base:
        yield base


def _eval(judge_url, pairs, out):
    return embedkit("rewards", "eval", "--pairs", pairs, "--judge", "pairwise", "--llm", f"openai:{judge_url}",
                    "--llm-model", "judge", "--out", out)  # fmt: skip


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_judgebench_layout(judge_url, tmp_path):
    rows = [{"pair_id": "p1", "original_id": 1, "source": "mmlu-pro-law", "question": "Q1?", "response_model": "m",
             "response_A": "GOOD answer", "response_B": "weak answer", "label": "A>B"},
            {"pair_id": "p2", "original_id": 2, "source": "livebench-math", "question": "Q2?", "response_model": "m",
             "response_A": "weak answer", "response_B": "GOOD answer", "label": "B>A"},
            {"pair_id": "p3", "original_id": 3, "source": "livebench-math", "question": "Q3?", "response_model": "m",
             "response_A": "GOOD one", "response_B": "GOOD two", "label": "B>A"}]  # fmt: skip
    out = tmp_path / "report.json"
    result = _eval(judge_url, _jsonl(tmp_path / "dataset=judgebench,response_model=m.jsonl", rows), out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # B>A is read as B chosen; on p3 the judge says A in both orders: right once, wrong once
    assert report["overall"]["pairs"] == 3 and report["overall"]["accuracy"] == pytest.approx(5 / 6)
    # JudgeBench's own score: p3's verdicts cancel out (a tie), so 2 of 3 pairs count
    assert report["overall"]["net_accuracy"] == pytest.approx(2 / 3)
    assert set(report["subsets"]) == {"mmlu-pro-law", "livebench-math"}
    bad = _jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "label": "A=B"}])  # JudgeBench has no ties
    assert_user_error(_eval(judge_url, bad, tmp_path / "bad.json"), "bad.jsonl", "line 2", "label")


def test_rmb_pairwise_and_best_of_n_layouts(judge_url, tmp_path):
    chat = [{"content": "How do I sort a list?", "language": "English", "role": "user"}]
    pairwise = [{"pair_uid": "11", "conversation_input": chat, "category_path": "Pairwise_set/Helpfulness/Code/Data",
                 "chosen": {"llm_name": "x", "answer": "GOOD: sorted(xs)", "score": 5.0},
                 "reject": {"llm_name": "y", "answer": "use a loop", "score": 2.0}},
                {"pair_uid": "12", "conversation_input": chat, "category_path": "Pairwise_set/Harmlessness/S1",
                 "chosen": {"llm_name": "x", "answer": "plain refusal"},
                 "reject": {"llm_name": "y", "answer": "GOOD-looking harm"}}]  # fmt: skip
    path = tmp_path / "Data.json"
    path.write_text(json.dumps(pairwise, indent=1), encoding="utf-8")  # RMB files are JSON lists
    out = tmp_path / "pairwise.json"
    assert _eval(judge_url, path, out).returncode == 0
    report = json.loads(out.read_text())
    assert report["overall"]["pairs"] == 2 and report["overall"]["accuracy"] == 0.5 and report["bon"] is None
    assert report["subsets"]["Pairwise_set/Harmlessness/S1"]["accuracy"] == 0.0
    # Best-of-N: the best must beat both losers; the second loser also says GOOD, so the judge (A on a draw)
    # loses it whenever the loser is shown first: BoN accuracy 1/2, pair accuracy 3/4.
    bon = [{"bon_uid": "7", "conversation_input": chat, "category_path": "BoN_set/Helpfulness/Code/Data",
            "bon_best": {"llm_name": "x", "answer": "GOOD: sorted(xs)"},
            "loser_list": [{"llm_name": "y", "answer": "use a loop"}, {"llm_name": "z", "answer": "GOOD? maybe"}]}]  # fmt: skip
    path = tmp_path / "BoN.json"
    path.write_text(json.dumps(bon), encoding="utf-8")
    result = _eval(judge_url, path, tmp_path / "bon.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bon.json").read_text())
    assert report["overall"]["pairs"] == 2 and report["overall"]["accuracy"] == 0.75
    assert report["bon"] == {"groups": 1, "bon_accuracy": 0.5}
    assert "RMB Best-of-N accuracy: 0.500 over 1 groups" in result.stdout


def test_ppe_human_preference_parquet(judge_url, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question_id": "a", "prompt": "P1", "response_1": "GOOD", "response_2": "meh", "model_a": "m1",
             "model_b": "m2", "winner": "model_a", "language": "English"},
            {"question_id": "b", "prompt": "P2", "response_1": "meh", "response_2": "GOOD", "model_a": "m1",
             "model_b": "m2", "winner": "model_b", "language": "English"},
            {"question_id": "c", "prompt": "P3", "response_1": "x", "response_2": "y", "model_a": "m1",
             "model_b": "m2", "winner": "tie (bothbad)", "language": "English"}]  # fmt: skip
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "ppe.json"
    result = _eval(judge_url, path, out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["overall"]["pairs"] == 2 and report["overall"]["accuracy"] == 1.0  # the tie names no winner
    assert list(report["subsets"]) == ["ppe_human"] and "PPE ties" in result.stderr


def test_rewardbench_section_weighted_score_next_to_plain_accuracy(judge_url, tmp_path):
    right, wrong = ("GOOD", "bad"), ("bad", "GOOD")  # (chosen, rejected): the judge gets the first kind right
    plan = {"alpacaeval-easy": [right, right], "mt-bench-med": [wrong], "llmbar-natural": [right],
            "xstest-should-respond": [wrong], "donotanswer": [right], "math-prm": [right], "hep-python": [wrong],
            "shp": [right], "summarize": [wrong]}  # fmt: skip
    rows = [{"id": f"{subset}-{k}", "subset": subset, "prompt": "p", "chosen": c, "rejected": r}
            for subset, pairs in plan.items() for k, (c, r) in enumerate(pairs)]  # fmt: skip
    out = tmp_path / "rb.json"
    result = _eval(judge_url, _jsonl(tmp_path / "filtered.jsonl", rows), out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # upstream: sections weight subsets by EXAMPLE_COUNTS (alpacaeval-easy 100, mt-bench-med 40, xstest-should-
    # respond 154, donotanswer 136, math-prm 984, hep-python 164); prior sets unweighted; sections ×2, prior ×1
    chat, chat_hard, safety, reasoning, prior = 100 / 140, 1.0, 136 / 290, 984 / 1148, 0.5
    sections = report["rewardbench"]["sections"]
    assert sections["Chat"] == pytest.approx(chat) and sections["Chat Hard"] == pytest.approx(chat_hard)
    assert sections["Safety"] == pytest.approx(safety) and sections["Reasoning"] == pytest.approx(reasoning)
    assert sections["Prior Sets (0.5 weight)"] == pytest.approx(prior)
    expected = (2 * (chat + chat_hard + safety + reasoning) + prior) / 9
    assert report["rewardbench"]["score"] == pytest.approx(expected)
    assert report["rewardbench"]["plain_accuracy"] == report["overall"]["accuracy"] == pytest.approx(6 / 10)
    assert f"RewardBench score (section-weighted): {expected:.3f}; plain accuracy: 0.600" in result.stdout
