"""Agentic-R labelling: the training-pair rule, the listwise judge over a real local HTTP server, answer
containment, global utility by re-running the deterministic agent, and `embedkit agentic-r label`."""

import json

import pytest
from fastapi import FastAPI, Request

from agents.agentic_r import LabelConfig, build_pairs, label, parse_listwise_scores, read_pairs
from agents.agentic_r.utility import Step, contains_answer
from agents.llm import OpenAICompatibleBackend
from agents.retrieval import IndexRetriever, Passage
from agents.search_agent import AgentConfig, HeuristicPolicy, SearchAgent, write_trajectories
from agents.search_agent.questions import Question
from agents.search_agent.trajectory import Trajectory
from embedkit.cli import main
from embedkit.data import Document
from embedkit.index import Index, build_dense_index
from tests.helpers import running_server

DOCS = [
    ("k1", "Kiss and Tell (1945 film)",
     "Kiss and Tell is a 1945 comedy film starring Shirley Temple as the teenager Corliss Archer."),
    ("s1", "Shirley Temple",
     "Shirley Temple Black was an American actress. She held the government position of Chief of Protocol."),
    ("m1", "Meet Corliss Archer", "Meet Corliss Archer is a radio sitcom that ran on CBS from 1943 to 1956."),
    ("v1", "Volcano", "A volcano erupts when molten rock rises through the crust of a planet."),
    ("b1", "Bread", "Bread is baked from flour, water, salt and yeast in an oven."),
]
QUESTION = Question("q1", "What government position was held by the actress who starred in the film Kiss and Tell?",
                    ["Chief of Protocol"])  # fmt: skip
AGENT = AgentConfig(top_k=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, minilm_encoder):
    out = tmp_path_factory.mktemp("label") / "index"
    build_dense_index([Document(id=i, title=t, text=x) for i, t, x in DOCS], minilm_encoder, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def setup(index_path):
    index = Index.load(index_path)
    agent = SearchAgent(HeuristicPolicy(), IndexRetriever(index), AGENT)
    return index, agent, agent.run([QUESTION])


def _step(locals_, ems, n=None):
    passages = [Passage(id=f"p{i}", title=f"T{i}", text=f"text {i}", score=0.0) for i in range(len(locals_))]
    trajectory = Trajectory(id="t", question="q", answers=["a"])
    return Step(trajectory=trajectory, turn=0, query="q", retriever_query="q [SEP] q", candidates=passages,
                local=list(locals_), global_=list(ems))  # fmt: skip


def test_pair_rule():
    config = LabelConfig()
    locals_ = [0.9, 0.9, 0.9, 0.9, 0.95] + [0.1 * (i % 10) for i in range(20)]
    ems = [1, 1, 1, 1, 0] + [0] * 20
    kept, stats = build_pairs([_step(locals_, ems), _step([0.9, 0.2], [0, 0]), _step([0.5, 0.9], [1, 0])], config)
    assert stats == {"steps": 3, "kept": 1, "skipped_em0": 1, "skipped_local": 1}
    pair = kept[0]
    # EM first, then local: p4 has the best local but EM 0; four tie at (1, 0.9) and three are kept, in order
    assert [p.id for p in pair.positives] == ["p0", "p1", "p2"]
    negatives = [p.id for p in pair.negatives]
    assert len(negatives) == 15 == len(set(negatives)) and not set(negatives) & {"p0", "p1", "p2"}
    again, _ = build_pairs([_step(locals_, ems)], config)
    assert [p.id for p in again[0].negatives] == negatives  # seeded
    assert pair.query == "q [SEP] q"


def test_listwise_scores_and_containment():
    reply = "[1] 85\n[2]: 10\n[3] 150/100\n[9] 40\nsomething else\n[4] - 60"
    assert parse_listwise_scores(reply, 5) == [0.85, 0.10, 1.0, 0.6, 0.0]
    passage = Passage(id="x", title="Shirley Temple", text="She was Chief of Protocol, U.S.", score=0)
    assert contains_answer(passage, ["the Chief of Protocol"]) and not contains_answer(passage, ["Chief of Pro"])
    assert not contains_answer(Passage(id="y", title="", text="yes, no", score=0), ["yes", "no"])


def test_label_with_rerun_global_utility(setup):
    index, agent, trajectories = setup
    assert trajectories[0].em == 1.0
    pairs, stats = label(trajectories, IndexRetriever(index), LabelConfig(min_local=0.0), agent=agent, index=index)
    assert stats["steps"] == 2 and stats["kept"] == len(pairs) >= 1
    for pair in pairs:
        assert pair.query.startswith(QUESTION.question + " [SEP] ")
        assert all(p.em == 1.0 for p in pair.positives) and len(pair.negatives) <= 4
        assert {p.id for p in pair.positives} <= {"k1", "s1"}
    bridge = next(p for p in pairs if p.turn == 1)  # the bridge search: only the answer passage gives EM 1
    assert [p.id for p in bridge.positives] == ["s1"] and all(p.em == 0.0 for p in bridge.negatives)


@pytest.fixture(scope="module")
def judge_url():
    """A judge: infers the sub-answer 'Shirley Temple'; scores passages naming Shirley Temple 90, others 5."""

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        if "What is the short answer" in prompt:
            text = "<answer> Shirley Temple </answer>"
        else:
            lines = [line for line in prompt.splitlines() if line.startswith("[") and "(Title:" in line]
            text = "\n".join(f"[{i}] {90 if 'Shirley Temple' in line else 5}" for i, line in enumerate(lines, 1))
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    with running_server(app) as base:
        yield f"{base}/v1"


def test_label_with_llm_judge_and_containment(setup, judge_url):
    index, agent, trajectories = setup
    judge = OpenAICompatibleBackend(judge_url, "judge", timeout=10, max_retries=0)
    config = LabelConfig(local="llm_judge", global_utility="containment", judge_batch=2)
    pairs, stats = label(trajectories, IndexRetriever(index), config, judge=judge)
    # only s1 contains the answer; the judge gives it 0.9 (it names Shirley Temple), so both steps keep it
    assert stats == {"steps": 2, "kept": 2, "skipped_em0": 0, "skipped_local": 0}
    for pair in pairs:
        assert [(p.id, p.local, p.em) for p in pair.positives] == [("s1", 0.9, 1.0)]
        assert {p.id: p.local for p in pair.negatives}["k1"] == 0.9  # judged relevant, but no answer in it
        assert {p.id: p.local for p in pair.negatives}["b1"] == 0.05


def test_cli_label(setup, index_path, tmp_path, capsys):
    _, _, trajectories = setup
    path = write_trajectories(tmp_path / "t.jsonl", trajectories)
    out = tmp_path / "pairs.jsonl"
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out", str(out),
                 "--global", "containment", "--min-local", "0"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[0])["kept"] == 2
    assert [p.positives[0].id for p in read_pairs(out)] == ["s1", "s1"]
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out",
                 str(tmp_path / "judge.jsonl"), "--local", "llm_judge"]) == 2  # no judge given  # fmt: skip
    (tmp_path / "broken.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    assert main(["agentic-r", "label", "--trajectories", str(tmp_path / "broken.jsonl"), "--index",
                 str(index_path), "--out", str(tmp_path / "p2.jsonl")]) == 2  # fmt: skip
    assert not (tmp_path / "judge.jsonl").exists() and not (tmp_path / "p2.jsonl").exists()
