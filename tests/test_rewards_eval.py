"""Reward-model evaluation: verdict parsing, pair loaders (RewardBench, RM-Bench, chat), the both-orders
harness arithmetic on a hand-made pair file, labelled-pair builders, and `embedkit rewards eval` end to end."""

import json
import re
from pathlib import Path

import pytest

from agents.rewards.evaluate import evaluate_pairs, judge_pairs, summarize
from agents.rewards.judges import JUDGES, JudgeItem, JudgeOutput, build_judge, build_llm
from agents.rewards.pairs import PreferencePair, load_pairs, write_pairs
from agents.rewards.parsing import parse_pairwise
from embedkit.errors import DataFormatError, EmbedkitError


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---- verdict parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<critique>A is right.</critique> <verdict>A</verdict>", "A"),
        ("reasoning ... <verdict> b. </verdict>", "B"),
        ("<verdict>A</verdict> on reflection <verdict>B</verdict>", "B"),  # the last verdict counts
        ("<verdict>tie</verdict>", "tie"),
        ("<verdict>Equal</verdict>", "tie"),
        ("MT-Bench style: [[A]]", "A"),
        ("[[B]] then [[C]]", "tie"),
        ("<verdict>A or B</verdict>", None),
        ("<verdict>Response A</verdict>", None),
        ("I think A is better.", None),
        ("", None),
    ],
)
def test_parse_pairwise(text, expected):
    assert parse_pairwise(text) == expected


# ---- pair loaders ------------------------------------------------------------------------------------------
def test_rewardbench_layout_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": "2+2?", "chosen": "4", "chosen_model": "m1", "rejected": "5", "rejected_model": "m2",
                "subset": "math-prm", "id": 7},
               {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "subset": "alpacaeval-easy", "id": 8}]  # fmt: skip
    jsonl = load_pairs(_write_jsonl(tmp_path / "rb.jsonl", records))
    assert [(p.id, p.subset, p.chosen, p.rejected) for p in jsonl] == [("7", "math-prm", "4", "5"),
                                                                       ("8", "alpacaeval-easy", "Paris", "Lyon")]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "rb.parquet")
    assert load_pairs(tmp_path / "rb.parquet") == jsonl
    assert [p.id for p in load_pairs(tmp_path / "rb.parquet", subsets=["math-prm"])] == ["7"]


def test_rmbench_layout_expands_to_nine_pairs_with_difficulty(tmp_path):
    record = {"id": "r1", "prompt": "Explain X.", "domain": "chat",
              "chosen": ["c-concise", "c-detailed", "c-markdown"], "rejected": ["r-concise", "r-detailed", "r-markdown"]}  # fmt: skip
    pairs = load_pairs(_write_jsonl(tmp_path / "rm.jsonl", [record]))
    assert len(pairs) == 9 and {p.subset for p in pairs} == {"chat"}
    by = {(p.chosen, p.rejected): p.tags["difficulty"] for p in pairs}
    assert by[("c-concise", "r-markdown")] == "hard"  # the right answer has less style than the wrong one
    assert by[("c-detailed", "r-detailed")] == "normal"
    assert by[("c-markdown", "r-concise")] == "easy"
    assert sum(v == "hard" for v in by.values()) == 3


def test_chat_layout_and_roundtrip(tmp_path):
    chat = {"chosen": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello!"}],
            "rejected": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}]}  # fmt: skip
    (pair,) = load_pairs(_write_jsonl(tmp_path / "chat.jsonl", [chat]))
    assert (pair.prompt, pair.chosen, pair.rejected) == ("user: hi?", "hello!", "go away")
    back = load_pairs(write_pairs(tmp_path / "out.jsonl", [PreferencePair("x", "p", "c", "r", "s", {"difficulty": "hard"})]))
    assert back[0].tags == {"difficulty": "hard"}


def test_pair_file_errors_name_the_line_and_field(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 2.*'rejected'"):
        load_pairs(bad)
    rm = _write_jsonl(tmp_path / "rm.jsonl", [{"prompt": "p", "chosen": ["a", "b"], "rejected": ["c"]}])
    with pytest.raises(DataFormatError, match="as long as 'chosen'"):
        load_pairs(rm)
    with pytest.raises(DataFormatError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl")


# ---- the harness -------------------------------------------------------------------------------------------
class RuleJudge:
    """A deterministic judge: prefers the response containing "good"; on a pair where neither or both do, it
    says A (position bias); items whose prompt contains "tie" get a tie and "junk" no verdict at all."""

    def __init__(self):
        self.calls = []

    def judge(self, items):
        self.calls.append(len(items))
        out = []
        for item in items:
            if "junk" in item.prompt:
                out.append(JudgeOutput(parse_pairwise("no idea"), "no idea"))
            elif "tie" in item.prompt:
                out.append(JudgeOutput(parse_pairwise("<verdict>tie</verdict>"), "tie"))
            elif ("good" in item.a) != ("good" in item.b):
                out.append(JudgeOutput("A" if "good" in item.a else "B", ""))
            else:
                out.append(JudgeOutput("A", "position A"))
        return out


PAIRS = [
    {"id": "1", "prompt": "q1", "chosen": "good one", "rejected": "bad", "subset": "easy"},
    {"id": "2", "prompt": "q2", "chosen": "good two", "rejected": "meh", "subset": "easy"},
    {"id": "3", "prompt": "q3", "chosen": "fine", "rejected": "poor", "subset": "hard"},  # biased: A both times
    {"id": "4", "prompt": "q4 tie", "chosen": "x", "rejected": "y", "subset": "hard"},
    {"id": "5", "prompt": "q5 junk", "chosen": "x", "rejected": "y", "subset": "hard"},
]


def test_accuracy_flip_rate_and_position_gap_by_hand(tmp_path):
    pairs = load_pairs(_write_jsonl(tmp_path / "pairs.jsonl", PAIRS))
    judge = RuleJudge()
    report = evaluate_pairs(pairs, judge, judge_name="rule", batch_size=4)
    assert judge.calls == [4, 4, 2]  # 10 judgements (two orders per pair) in batches of 4
    o = report.overall
    # chosen first: pairs 1, 2, 3 right (3 by position); chosen second: pairs 1, 2 right → 5 of 10
    assert o["accuracy"] == pytest.approx(5 / 10)
    assert o["acc_chosen_first"] == pytest.approx(3 / 5) and o["acc_chosen_second"] == pytest.approx(2 / 5)
    assert o["position_bias_gap"] == pytest.approx(1 / 5)
    # readable in both orders: 1, 2, 3, 4; pair 3 flips (chosen, then rejected); pair 4 is tie/tie
    assert (o["flip_pairs"], o["flip_rate"]) == (4, pytest.approx(1 / 4))
    assert (o["ties"], o["invalid"]) == (2, 2)
    assert o["both_correct"] == pytest.approx(2 / 5)
    assert o["decided_accuracy"] == pytest.approx(5 / 6)
    easy, hard = report.subsets["easy"], report.subsets["hard"]
    assert (easy["accuracy"], easy["flip_rate"], easy["position_bias_gap"]) == (1.0, 0.0, 0.0)
    assert hard["accuracy"] == pytest.approx(1 / 6) and hard["flip_rate"] == pytest.approx(1 / 2)
    assert hard["position_bias_gap"] == pytest.approx(1 / 3)
    table = report.table()
    assert "| easy | 2 | 1.000 |" in table and "| **overall** | 5 | 0.500 |" in table and "+0.200" in table
    assert json.loads(report.to_json())["overall"]["invalid"] == 2


def test_both_orders_are_shown_and_tags_reported():
    seen = []

    class Recorder:
        def judge(self, items):
            seen.extend(items)
            return [JudgeOutput("B", "")] * len(items)

    pairs = [PreferencePair("p", "q", "C", "R", "s", {"difficulty": "hard"})]
    report = summarize(judge_pairs(pairs, Recorder()), "always-b")
    assert seen == [JudgeItem("q", "C", "R"), JudgeItem("q", "R", "C")]
    assert report.overall["acc_chosen_first"] == 0.0 and report.overall["acc_chosen_second"] == 1.0
    assert report.overall["flip_rate"] == 1.0 and report.tags["difficulty"]["hard"]["pairs"] == 1


def test_judge_registry_and_llm_specs():
    assert set(JUDGES.names()) >= {"pairwise", "consistrm", "reflectrm", "acgenrm"}
    with pytest.raises(EmbedkitError, match="choose one of: acgenrm, consistrm, pairwise, reflectrm"):
        JUDGES.get("pairwize")
    with pytest.raises(EmbedkitError, match="hf:PATH or openai:URL"):
        build_llm("somewhere")
    with pytest.raises(EmbedkitError, match="--llm-model"):
        build_llm("openai:http://127.0.0.1:1")
    with pytest.raises(EmbedkitError, match="bad options"):
        build_judge("pairwise", object(), n_analyses=3)


# ---- labelled pairs with known winners -----------------------------------------------------------------------
def test_synthetic_pairs_have_verified_winners():
    from agents.rewards.pair_data import countdown_pairs, math_pairs, split_pairs
    from agents.rl.rewards import countdown_score, last_boxed, math_equal

    for pair in countdown_pairs(10, seed=1):
        numbers = [int(n) for n in re.search(r"numbers \[(.*?)\]", pair.prompt).group(1).split(",")]
        target = int(re.search(r"equals (\d+)", pair.prompt).group(1))
        assert countdown_score(pair.chosen, target, numbers) == 1.0 > countdown_score(pair.rejected, target, numbers)
    for pair in math_pairs(10, seed=1):
        a, b, c = map(int, re.search(r"Compute (\d+) \* (\d+) \+ (\d+)", pair.prompt).groups())
        assert math_equal(last_boxed(pair.chosen), str(a * b + c)) and not math_equal(last_boxed(pair.rejected), str(a * b + c))
    train, test = split_pairs(countdown_pairs(10) + math_pairs(10), held_out=0.3)
    assert len(test) == 6 and {p.subset for p in test} == {"countdown", "math"} and not {p.id for p in train} & {p.id for p in test}


def test_qa_pairs_from_shared_data(shared_data):
    from agents.rewards.pair_data import qa_pairs
    from agents.rl.rewards import normalize_answer
    from agents.search_agent.questions import load_questions

    for source, file in (("hotpotqa", "hotpotqa_dev500/dev_subsampled.jsonl"), ("nq", "qa_questions/nq_open_test.jsonl"),
                         ("bamboogle", "qa_questions/bamboogle_test.jsonl")):  # fmt: skip
        golds = {q.question: {normalize_answer(a) for a in q.answers} for q in load_questions(shared_data / file)}
        pairs = qa_pairs(source, 20, shared_dir=shared_data)
        assert len(pairs) == 20 and len({p.id for p in pairs}) == 20
        for p in pairs:
            chosen = normalize_answer(p.chosen.removeprefix("The answer is "))
            rejected = normalize_answer(p.rejected.removeprefix("The answer is "))
            assert chosen in golds[p.prompt] and rejected not in golds[p.prompt]


# ---- the command line --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_eval_over_an_openai_server(tmp_path, capsys):
    """`embedkit rewards eval` against a real HTTP server that always answers A: every order-swap flips."""
    from fastapi import FastAPI, Request

    from embedkit.cli import main
    from tests.helpers import running_server

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        await request.json()
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "<verdict>A</verdict>"}}]}

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:3])
    out, records = tmp_path / "report.json", tmp_path / "judgements.jsonl"
    with running_server(app) as base:
        status = main(["rewards", "eval", "--pairs", str(pairs), "--judge", "consistrm", "--llm", f"openai:{base}",
                       "--llm-model", "judge", "--out", str(out), "--records", str(records)])  # fmt: skip
    assert status == 0
    report = json.loads(out.read_text())
    assert report["overall"]["acc_chosen_first"] == 1.0 and report["overall"]["acc_chosen_second"] == 0.0
    assert report["overall"]["position_bias_gap"] == 1.0 and report["overall"]["flip_rate"] == 1.0
    assert "| **overall** | 3 | 0.500 |" in capsys.readouterr().out
    assert len(records.read_text().splitlines()) == 3
    assert main(["rewards", "eval", "--pairs", str(pairs), "--judge", "nope", "--llm", "hf:x"]) == 2
    assert main(["rewards", "eval", "--pairs", str(tmp_path / "none.jsonl"), "--judge", "pairwise", "--llm", "hf:x"]) == 2


def test_cli_build_pairs_and_prompts(tmp_path, capsys):
    from embedkit.cli import main

    out = tmp_path / "pairs.jsonl"
    assert main(["rewards", "build-pairs", "--sources", "countdown,math", "--per-source", "5", "--out", str(out),
                 "--held-out", "0.4"]) == 0  # fmt: skip
    assert len(load_pairs(out)) == 10 and len(load_pairs(tmp_path / "pairs.heldout.jsonl")) == 4
    prompts = tmp_path / "prompts.jsonl"
    assert main(["rewards", "build-prompts", "--kind", "consistrm", "--pairs", str(out), "--out", str(prompts)]) == 0
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    assert len(records) == 20 and {r["answer"]["swapped"] for r in records} == {False, True}
    assert main(["rewards", "build-prompts", "--kind", "acpo", "--pairs", str(out), "--out", str(prompts)]) == 0
    assert len(prompts.read_text().splitlines()) == 10
    assert main(["rewards", "build-pairs", "--sources", "poetry", "--out", str(out)]) == 2
