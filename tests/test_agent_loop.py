"""The search-agent loop over a real index: protocol parsing, the deterministic policy, bad input, a retriever
that is down or slow, questions without answers, and `embedkit agent run`."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agents.retrieval import IndexRetriever, Retriever
from agents.search_agent import (
    AgentConfig,
    HeuristicPolicy,
    SearchAgent,
    load_questions,
    parse_action,
    read_trajectories,
    restore_stop,
    summarize,
)
from agents.search_agent.questions import Question
from embedkit.cli import main
from embedkit.data import Document
from embedkit.errors import DataFormatError
from embedkit.index import Index, build_dense_index
from tests.helpers import MULTIHOP_DOCS

DOCS = MULTIHOP_DOCS
QUESTION = Question("q1", "What government position was held by the actress who starred in the film Kiss and Tell?",
                    ["Chief of Protocol"])  # fmt: skip
TWO_HOP = AgentConfig(top_k=1, retrieval_timeout_s=2.0, retrieval_retries=1, retrieval_backoff_s=0.01)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, minilm_encoder):
    out = tmp_path_factory.mktemp("agent") / "index"
    build_dense_index([Document(id=i, title=t, text=x) for i, t, x in DOCS], minilm_encoder, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def retriever(index_path):
    retriever = IndexRetriever(Index.load(index_path))
    retriever.retrieve(["warm-up"], k=1)  # loads the query encoder, so timeouts below measure retrieval only
    return retriever


def test_parse_action_and_restore_stop():
    assert parse_action("<think>x</think> <search>  who  is X </search>").content == "who is X"
    assert parse_action("<answer> Paris </answer>").kind == "answer"
    assert parse_action("<search> a </search> then <answer> b </answer>").kind == "search"  # first tag wins
    assert parse_action("I think the answer is Paris").kind == "invalid"
    assert parse_action("<search>   </search>").kind == "invalid"
    assert parse_action("<answer> </answer>").kind == "answer"
    # backends cut before the stop string; the loop puts exactly the stop string back
    assert restore_stop("<think>t</think><search> q ") == "<think>t</think><search> q </search>"
    assert restore_stop("<search> a </search> x <answer> b") == "<search> a </search> x <answer> b</answer>"
    assert restore_stop("no tags") == "no tags"


def test_heuristic_agent_finds_bridge_and_answers(retriever):
    trajectory = SearchAgent(HeuristicPolicy(), retriever, TWO_HOP).run([QUESTION])[0]
    searches = trajectory.searches
    assert [s.query for s in searches] == [QUESTION.question, "Shirley Temple"]
    assert [p.id for s in searches for p in s.passages] == ["k1", "s1"]
    assert "<information>Doc 1(Title: Shirley Temple) Shirley Temple Black" in searches[1].information
    assert trajectory.prediction == "Chief of Protocol" and trajectory.em == 1.0 and trajectory.status == "answered"
    assert trajectory.transcript.count("<information>") == 2 and trajectory.retrieved_ids() == ["k1", "s1"]


class Scripted:
    """Plays back fixed turns, to feed the loop output no policy should produce."""

    def __init__(self, turns):
        self.turns = turns

    def act(self, trajectories, config):
        return [self.turns[min(len(t.turns), len(self.turns) - 1)] for t in trajectories]


def test_unparseable_output_gets_feedback_and_uses_turns(retriever):
    policy = Scripted(["I am not sure what to do.", "<search> Shirley Temple", "<answer> Chief of Protocol"])
    trajectory = SearchAgent(policy, retriever, TWO_HOP).run([QUESTION])[0]
    assert [t.action for t in trajectory.turns] == ["invalid", "search", "answer"]
    assert "not valid" in trajectory.turns[0].information
    assert trajectory.turns[1].output.endswith("</search>") and trajectory.em == 1.0
    stuck = SearchAgent(Scripted(["hmm"]), retriever, TWO_HOP.model_copy(update={"max_turns": 3})).run([QUESTION])[0]
    assert stuck.status == "max_turns" and stuck.prediction is None and stuck.em == 0.0
    # three rounds with feedback, then Search-R1's extra answer turn (no feedback after it)
    assert summarize([stuck])["invalid_turns"] == 4 and stuck.turns[-1].information == ""


def test_max_turns_counts_search_rounds_like_search_r1(retriever):
    """max_turns rounds may search; one more turn follows for the answer, in which a search is not run."""
    searcher = Scripted(["<search> Shirley Temple </search>"])
    config = TWO_HOP.model_copy(update={"max_turns": 2})
    stuck = SearchAgent(searcher, retriever, config).run([QUESTION])[0]
    assert [t.action for t in stuck.turns] == ["search"] * 3 and stuck.status == "max_turns"
    assert [bool(t.passages) for t in stuck.turns] == [True, True, False] and stuck.turns[-1].information == ""
    answers = Scripted(["<search> Shirley Temple </search>", "<search> Kiss and Tell </search>",
                        "<answer> Chief of Protocol </answer>"])  # fmt: skip
    done = SearchAgent(answers, retriever, config).run([QUESTION])[0]
    assert done.status == "answered" and len(done.searches) == 2 and done.em == 1.0  # the answer turn is extra


class Flaky:
    """A real retriever behind a connection that fails the first `failures` calls."""

    def __init__(self, inner: Retriever, failures: int, delay: float = 0.0) -> None:
        self.inner, self.failures, self.delay, self.calls = inner, failures, delay, 0

    def retrieve(self, queries, k=3):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection refused")
        time.sleep(self.delay)
        return self.inner.retrieve(queries, k)


def test_retriever_down_slow_and_recovering(retriever):
    flaky = Flaky(retriever, failures=1)
    ok = SearchAgent(HeuristicPolicy(), flaky, TWO_HOP).run([QUESTION])[0]
    assert ok.em == 1.0 and ok.turns[0].retrieval_attempts == 2 and ok.turns[0].error is None

    down = Flaky(retriever, failures=10**6)
    questions = [QUESTION, Question("q2", "Who starred in Kiss and Tell?", ["Shirley Temple"])]
    failed = SearchAgent(HeuristicPolicy(), down, TWO_HOP).run(questions)
    assert len(failed) == 2 and all(t.status == "answered" for t in failed)  # the run went on
    turn = failed[0].turns[0]
    assert "ConnectionError" in turn.error and turn.passages == [] and "(search failed" in turn.information
    assert summarize(failed)["retrieval_failures"] >= 2

    slow = Flaky(retriever, failures=0, delay=5.0)
    config = TWO_HOP.model_copy(update={"retrieval_timeout_s": 0.3, "retrieval_retries": 0, "max_turns": 2})
    began = time.monotonic()
    timed_out = SearchAgent(HeuristicPolicy(), slow, config).run([QUESTION])[0]
    assert "timed out" in timed_out.turns[0].error and time.monotonic() - began < 4.5
    assert threading.active_count() < 50


def test_questions_without_answers_are_run_not_scored(retriever, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        json.dumps({"question_id": "a", "question_text": QUESTION.question,
                    "answers_objects": [{"spans": ["Chief of Protocol"]}]}) + "\n"
        + json.dumps({"id": "b", "question": "Who starred in Kiss and Tell?"}) + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Which radio sitcom ran on CBS?"}],
                      "reward_model": {"ground_truth": {"target": ["Meet Corliss Archer"]}}}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    questions = load_questions(path)
    assert [q.answers for q in questions] == [["Chief of Protocol"], [], ["Meet Corliss Archer"]]
    trajectories = SearchAgent(HeuristicPolicy(), retriever, TWO_HOP).run(questions)
    assert trajectories[1].em is None and trajectories[1].prediction
    summary = summarize(trajectories)
    assert summary["questions"] == 3 and summary["scored"] == 2


def test_bad_question_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2"):
        load_questions(bad)
    bad.write_text('{"question": "ok?"}\n{"title": "no question"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2.*no question text"):
        load_questions(bad)


def test_cli_agent_run(index_path, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "q1", "question": QUESTION.question, "answers": QUESTION.answers}) + "\n",
                         encoding="utf-8")  # fmt: skip
    out = tmp_path / "runs" / "agent.jsonl"
    status = main(["agent", "run", "--questions", str(questions), "--index", str(index_path), "--llm", "heuristic",
                   "--top-k", "1", "--out", str(out), "-q"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "EM 1.0000" in printed and "searches per question: mean 2.00" in printed
    assert read_trajectories(out)[0].prediction == "Chief of Protocol"
    assert main(["agent", "run", "--questions", str(tmp_path / "missing.jsonl"), "--index", str(index_path),
                 "--out", str(tmp_path / "x.jsonl")]) == 2  # fmt: skip
    assert main(["agent", "run", "--questions", str(questions), "--index", str(index_path), "--max-turns", "0",
                 "--out", str(tmp_path / "x.jsonl")]) == 2  # fmt: skip
    assert not (tmp_path / "x.jsonl").exists()
