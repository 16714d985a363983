"""QA evaluation as Search-R1 / FlashRAG do it: answer lists (never a joined string), questions from their
jsonl and parquet layouts, EM / F1 / sub-EM per data_source and overall, `embedkit agent eval`."""

from __future__ import annotations

import json

import pytest

from agents.rl.rewards import exact_match_score, f1_score
from agents.search_agent import evaluate, load_questions, read_trajectories
from agents.search_agent.evaluate import sub_em_score
from agents.search_agent.questions import answer_list
from agents.search_agent.trajectory import Trajectory
from embedkit.cli import main
from embedkit.data import Document
from tests.helpers import MULTIHOP_DOCS, write_jsonl

DOCS = [doc for doc in MULTIHOP_DOCS if doc[0] != "v1"]
HOP = "What government position was held by the actress who starred in the film Kiss and Tell?"
# Our own wording, in the shape of Search-R1's data scripts: the whole instruction in prompt[0].content.
INSTRUCTION = "Answer the question, searching with <search> query </search> when needed. Question: {q}\n"
SOURCES = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]


def nq_record(index: int, answers: list[str]) -> dict:
    """A record in the verl NQ-open layout of ../shared/data/qa_questions/nq_open_test.jsonl."""
    return {"data_source": "google-research-datasets/nq_open", "prompt": [{"content": f"question {index}", "role": "user"}],
            "ability": "QA", "reward_model": {"ground_truth": ", ".join(answers), "style": "rule"},
            "extra_info": {"answer": answers, "index": index, "question": f"question {index}", "split": "test"}}  # fmt: skip


def test_nq_style_records_yield_answer_lists(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [nq_record(0, ["14 December 1972 UTC", "December 1972"]),
                                               nq_record(1, ["2017"])])  # fmt: skip
    questions = load_questions(path)
    assert [q.answers for q in questions] == [["14 December 1972 UTC", "December 1972"], ["2017"]]
    assert questions[0].question == "question 0" and questions[0].prompt is None  # the prompt is the question
    assert questions[0].data_source == "google-research-datasets/nq_open" and questions[1].id == "1"
    # a joined string never wins over a list, wherever the list is
    assert answer_list({"golden_answers": ["a, b", "c"], "answer": "a, b, c"}) == ["a, b", "c"]
    assert answer_list({"reward_model": {"ground_truth": {"target": ["x", "y"]}}, "answer": "x, y"}) == ["x", "y"]
    assert answer_list({"reward_model": {"ground_truth": ["x", "y"]}}) == ["x", "y"]
    assert answer_list({"answer": "only one"}) == ["only one"]
    assert answer_list({"reward_model": {"ground_truth": "x, y"}}) == ["x, y"]  # no list anywhere: the string
    # the RL module's jsonl task reads the same records the same way
    from agents.rl.tasks import TASKS

    examples = TASKS.get("jsonl")(path=str(path)).examples
    assert [(e.prompt, e.ground_truth) for e in examples] == [(q.question, q.answers) for q in questions]
    # scored against the list, "December 1972" is an exact match; against the joined string it was not
    assert exact_match_score("December 1972", questions[0].answers) == 1.0
    assert exact_match_score("December 1972", [", ".join(questions[0].answers)]) == 0.0


def test_real_nq_open_file_yields_answer_lists(shared_data):
    path = shared_data / "qa_questions" / "nq_open_test.jsonl"
    if not path.is_file():
        pytest.skip("NQ-open is not in the shared data")
    questions = load_questions(path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(questions) == len(records) == 3610
    assert [q.answers for q in questions] == [r["extra_info"]["answer"] for r in records]
    assert sum(len(q.answers) > 1 for q in questions) == 1534


def test_scores_normalise_like_search_r1_and_flashrag():
    assert exact_match_score("The Eiffel  Tower!", ["eiffel tower"]) == 1.0
    assert exact_match_score("an apple", ["Apple", "pear"]) == 1.0
    assert f1_score("Chief of Protocol of the US", ["Chief of Protocol"]) == pytest.approx(2 * (3 / 5) / (3 / 5 + 1))
    assert f1_score("no", ["No."]) == 1.0 and f1_score("no", ["no way"]) == 0.0  # yes/no must match exactly
    assert sub_em_score("it was Chief of Protocol, I think", ["chief of protocol"]) == 1.0
    assert sub_em_score(None, ["x"]) == 0.0
    report = evaluate([Trajectory(id="1", question="q", answers=["a"], data_source="nq", prediction="A"),
                       Trajectory(id="2", question="q", answers=["b"], data_source="nq", prediction="c"),
                       Trajectory(id="3", question="q", answers=[], data_source="popqa", prediction="c")])  # fmt: skip
    assert report["by_source"]["nq"]["em"] == 0.5 and report["by_source"]["popqa"]["em"] is None
    assert report["overall"]["scored"] == 2 and report["overall"]["questions"] == 3


def write_search_r1_parquet(path, rows: list[tuple[str, str, list[str]]]) -> None:
    """Search-R1's test layout: data_source, prompt (the whole instruction), reward_model.ground_truth.target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"data_source": source, "prompt": [{"role": "user", "content": INSTRUCTION.format(q=question)}],
                "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
                "extra_info": {"split": "test", "index": i}}
               for i, (source, question, answers) in enumerate(rows)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), path)


def test_search_r1_parquet_questions(tmp_path):
    rows = [(source, f"question about {source}?", [f"{source} answer", "other"]) for source in SOURCES]
    write_search_r1_parquet(tmp_path / "test.parquet", rows)
    questions = load_questions(tmp_path / "test.parquet")
    assert [q.data_source for q in questions] == SOURCES
    assert questions[0].question == "question about nq?" and questions[0].answers == ["nq answer", "other"]
    assert questions[0].prompt == INSTRUCTION.format(q="question about nq?")  # kept: the checkpoint's own prompt
    (tmp_path / "broken.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(Exception, match="parquet"):
        load_questions(tmp_path / "broken.parquet")


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, minilm_encoder):
    from embedkit.index import build_dense_index

    out = tmp_path_factory.mktemp("eval") / "index"
    build_dense_index([Document(id=i, title=t, text=x) for i, t, x in DOCS], minilm_encoder, out, quiet=True)
    return out


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_agent_eval_several_data_sources_in_one_command(index_path, tmp_path, capsys):
    parquet = tmp_path / "search_r1" / "test.parquet"
    parquet.parent.mkdir()
    write_search_r1_parquet(parquet, [("hotpotqa", HOP, ["Chief of Protocol", "Chief of Protocol of the US"]),
                                      ("nq", "Which radio sitcom ran on CBS from 1943 to 1956?",
                                       ["Meet Corliss Archer"]),
                                      ("bamboogle", "What is bread baked from?", ["flour"])])  # fmt: skip
    flashrag = write_jsonl(tmp_path / "popqa" / "test.jsonl",
                           [{"id": "p1", "question": "Who starred in Kiss and Tell?", "golden_answers": ["Shirley Temple"]}])  # fmt: skip
    out = tmp_path / "runs" / "eval.jsonl"
    status = main(["agent", "eval", "--questions", str(parquet), str(flashrag), "--index", str(index_path),
                   "--llm", "heuristic", "--top-k", "1", "--out", str(out), "-q"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    trajectories = read_trajectories(out)
    assert [t.data_source for t in trajectories] == ["hotpotqa", "nq", "bamboogle", "popqa"]
    assert trajectories[0].answers == ["Chief of Protocol", "Chief of Protocol of the US"]
    assert trajectories[0].prediction == "Chief of Protocol" and trajectories[0].em == 1.0
    assert trajectories[0].prompt == INSTRUCTION.format(q=HOP)  # prompt_source auto: the file's own instruction
    assert trajectories[3].prompt != trajectories[3].question and trajectories[3].policy.spec == "heuristic"
    metrics = json.loads((tmp_path / "runs" / "eval.metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["by_source"]) == {"hotpotqa", "nq", "bamboogle", "popqa"}
    for source, row in metrics["by_source"].items():
        group = [t for t in trajectories if t.data_source == source]
        assert row["em"] == sum(t.em for t in group) / len(group) and row["scored"] == len(group)
    assert metrics["overall"]["em"] == pytest.approx(sum(t.em for t in trajectories) / 4)
    assert metrics["overall"]["f1"] == pytest.approx(sum(t.f1 for t in trajectories) / 4)
    lines = printed.splitlines()
    assert any(line.startswith("hotpotqa") and "100.00" in line for line in lines)
    assert any(line.startswith("overall") for line in lines) and "metrics:" in printed

    # re-score the finished run; `agent run --eval` writes the same report
    assert main(["agent", "eval", "--trajectories", str(out), "--metrics", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8")) == metrics
    assert main(["agent", "run", "--questions", str(parquet), str(flashrag), "--index", str(index_path),
                 "--top-k", "1", "--out", str(tmp_path / "run.jsonl"), "--eval", "-q"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "run.metrics.json").read_text(encoding="utf-8")) == metrics
    # the instruction is a setting: --prompt-file wins over nothing but the file's own prompt (prompt_source)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("My instruction. Question: {question}\n", encoding="utf-8")
    assert main(["agent", "run", "--questions", str(parquet), "--index", str(index_path), "--prompt-file",
                 str(prompt_file), "--set", "prompt_source=template", "--limit", "1", "--out",
                 str(tmp_path / "p.jsonl"), "-q"]) == 0  # fmt: skip
    assert read_trajectories(tmp_path / "p.jsonl")[0].prompt == f"My instruction. Question: {HOP}\n"
    assert main(["agent", "eval", "--questions", str(parquet), "--index", str(index_path)]) == 2  # no --out
