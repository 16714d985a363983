"""Agentic-R labelling against the official pipeline's rules (hand-built cases): the training-pair rule, the
listwise judge (query alone, five bands, whole passages, unreadable replies drop the step) with sub-answers
from the whole trajectory, candidates for what the agent sent, global utility by re-running the policy the
trajectories record, and `embedkit agentic-r label`."""

import json
import re

import pytest
from fastapi import FastAPI, Request

from agents.agentic_r import (
    LabelConfig,
    build_pairs,
    collect_steps,
    label,
    parse_listwise_scores,
    parse_sub_answers,
    read_pairs,
    rerun_policy,
)
from agents.agentic_r.utility import Step, contains_answer
from agents.llm import OpenAICompatibleBackend
from agents.retrieval import IndexRetriever, Passage
from agents.search_agent import AgentConfig, HeuristicPolicy, SearchAgent, write_trajectories
from agents.search_agent.questions import Question
from agents.search_agent.trajectory import PolicyRecord, Trajectory
from embedkit.cli import main
from embedkit.data import Document
from embedkit.errors import EmbedkitError
from embedkit.index import Index, build_dense_index
from tests.helpers import MULTIHOP_DOCS, running_server

DOCS = MULTIHOP_DOCS
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


def test_pair_rule_excludes_every_tie_from_the_negatives():
    config = LabelConfig()
    # p0-p3 tie at (EM 1, 0.9); p4 has the best local but EM 0; p5 ties on local only; 20 more below
    locals_ = [0.9, 0.9, 0.9, 0.9, 0.95, 0.9] + [0.05 * (i % 10) for i in range(20)]
    ems = [1, 1, 1, 1, 0, 0] + [0] * 20
    kept, stats = build_pairs([_step(locals_, ems)], config)
    pair = kept[0]
    assert [p.id for p in pair.positives] == ["p0", "p1", "p2"]  # EM first, then local; the first 3 ties
    negatives = [p.id for p in pair.negatives]
    assert len(negatives) == 15 == len(set(negatives))
    assert not set(negatives) & {"p0", "p1", "p2", "p3"}  # p3 is tied with the best: never a negative
    # negatives are kept in utility order (EM, then local), hardest first
    keys = [(p.em, p.local) for p in pair.negatives]
    assert keys == sorted(keys, reverse=True)
    again, _ = build_pairs([_step(locals_, ems)], config)
    assert [p.id for p in again[0].negatives] == negatives  # seeded
    assert pair.query == "q [SEP] q"


def test_pair_rule_skips_steps_short_of_negatives_and_bad_bests():
    config = LabelConfig()
    # 4 ties + 14 others: 14 < 15 negatives, so upstream skips the step (a 16-passage group cannot be formed)
    short = _step([0.9] * 4 + [0.1] * 14, [1] * 4 + [0] * 14)
    enough = _step([0.9] * 4 + [0.1] * 15, [1] * 4 + [0] * 15)
    unjudged = _step([0.9] * 20, [1] + [0] * 19)
    unjudged.local = None  # the judge's reply could not be read
    kept, stats = build_pairs([short, enough, _step([0.9, 0.2], [0, 0]), _step([0.5, 0.9], [1, 0]), unjudged],
                              config)  # fmt: skip
    assert stats == {"steps": 5, "kept": 1, "skipped_unjudged": 1, "skipped_em0": 1, "skipped_local": 1,
                     "skipped_negatives": 1}  # fmt: skip
    assert len(kept[0].negatives) == 15
    small, small_stats = build_pairs([short], LabelConfig(negatives=14))
    assert small_stats["kept"] == 1 and len(small[0].negatives) == 14


def test_listwise_scores_sub_answers_and_containment():
    assert parse_listwise_scores("85 10 150 -3", 4) == [0.85, 0.10, 1.0, 0.0]
    assert parse_listwise_scores('"68 42 97" and more words', 3) == [0.68, 0.42, 0.97]  # extra text after: fine
    assert parse_listwise_scores("85 10", 3) is None  # too few scores: the step is dropped
    assert parse_listwise_scores("[1] 85\n[2] 10", 2) is None  # not the requested format
    assert parse_listwise_scores("high 10", 2) is None
    assert parse_sub_answers("<sub-answer> Shirley Temple </sub-answer> <Sub-Answer>Not Sure</sub-answer>", 2) == [
        "Shirley Temple", None]  # fmt: skip
    assert parse_sub_answers("<sub-answer> x </sub-answer>", 2) is None  # one per query, or none at all
    passage = Passage(id="x", title="Shirley Temple", text="She was Chief of Protocol, U.S.", score=0)
    assert contains_answer(passage, ["the Chief of Protocol"]) and not contains_answer(passage, ["Chief of Pro"])
    assert not contains_answer(Passage(id="y", title="", text="yes, no", score=0), ["yes", "no"])


class ScriptedJudge:
    """An in-process stand-in for the judge LLM: replies from a function of the prompt, and keeps the prompts."""

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def generate(self, prompts, *, max_new_tokens, temperature, stop):
        self.prompts += prompts
        return [self.reply(p[-1]["content"] if isinstance(p, list) else p) for p in prompts]


def _judged_step(trajectory, turn, n):
    long_text = "Shirley Temple Black was an American actress. " + "She served her country. " * 60 + "END-OF-TEXT"
    passages = [Passage(id=f"c{i}", title="Shirley Temple" if i == 0 else f"Other {i}",
                        text=long_text if i == 0 else f"unrelated text {i}") for i in range(n)]  # fmt: skip
    return Step(trajectory=trajectory, turn=turn, query=trajectory.turns[turn].query, retriever_query="",
                candidates=passages, global_=[1.0] + [0.0] * (n - 1))  # fmt: skip


def _two_search_trajectory():
    from agents.search_agent.trajectory import Turn

    turns = [Turn(output="<search> Kiss and Tell 1945 film star </search>", action="search",
                  query="Kiss and Tell 1945 film star", information=" <information> ... </information> "),
             Turn(output="<search> Shirley Temple government position </search>", action="search",
                  query="Shirley Temple government position", information=" <information> ... </information> "),
             Turn(output="<answer> Chief of Protocol </answer>", action="answer")]  # fmt: skip
    return Trajectory(id="q1", question=QUESTION.question, answers=["Chief of Protocol"], turns=turns)


def test_llm_judge_follows_upstream():
    from agents.agentic_r.utility import LOCAL_SCORERS

    trajectory = _two_search_trajectory()

    def reply(prompt):
        if "<sub-answer>" in prompt:  # one call per trajectory, every query at once
            return "<sub-answer> Shirley Temple </sub-answer> <sub-answer> Not Sure </sub-answer>"
        count = prompt.count("Passage [")
        return " ".join("90" if f"Passage [{i}]: Shirley Temple" in prompt else "5" for i in range(1, count + 1))

    judge = ScriptedJudge(reply)
    steps = [_judged_step(trajectory, 0, 12), _judged_step(trajectory, 1, 12)]
    LOCAL_SCORERS.get("llm_judge")(judge, batch=10)(steps)
    sub_prompts = [p[-1]["content"] for p in judge.prompts if "<sub-answer>" in p[-1]["content"]]
    assert len(sub_prompts) == 1  # the whole trajectory, with the gold answer
    assert "Chief of Protocol" in sub_prompts[0] and "Shirley Temple government position" in sub_prompts[0]
    assert [s.sub_answer for s in steps] == ["Shirley Temple", None]  # "Not Sure": no reference
    judged = [p[-1]["content"] for p in judge.prompts if "<sub-answer>" not in p[-1]["content"]]
    assert len(judged) == 4  # 12 candidates per step in batches of 10 and 2
    for prompt in judged:
        assert QUESTION.question not in prompt  # the sub-query alone
        assert "81-100" in prompt and "0-20" in prompt  # the five-band rubric
    assert "END-OF-TEXT" in judged[0]  # whole passages, not cut to 600 characters
    assert "Reference answer: Shirley Temple" in judged[0]
    assert not any("Reference answer" in p for p in judged[2:])  # step 2's sub-answer was "Not Sure"
    assert steps[0].local == [0.9] + [0.05] * 11

    # a batch whose reply cannot be parsed drops its step; the other step keeps its scores
    judge = ScriptedJudge(lambda p: "<sub-answer> a </sub-answer> <sub-answer> b </sub-answer>"
                          if "<sub-answer>" in p else ("I think 90" if "Shirley Temple government" in p else "70 " * 10))
    steps = [_judged_step(trajectory, 0, 12), _judged_step(trajectory, 1, 12)]
    LOCAL_SCORERS.get("llm_judge")(judge, batch=10)(steps)
    assert steps[0].local == [0.7] * 12 and steps[1].local is None
    pairs, stats = build_pairs(steps, LabelConfig(negatives=5))
    assert stats["skipped_unjudged"] == 1 and [p.turn for p in pairs] == [0]

    # the earlier variants stay available as settings
    judge = ScriptedJudge(lambda p: "<answer> Shirley Temple </answer>" if "short answer" in p
                          else ("1 " * 10 if p.count("Passage [") == 10 else "no idea"))
    steps = [_judged_step(trajectory, 0, 12)]
    LOCAL_SCORERS.get("llm_judge")(judge, batch=10, judge_input="question_and_query", passage_chars=600,
                                   unparseable="zero", sub_answers="step")(steps)  # fmt: skip
    judged = [p[-1]["content"] for p in judge.prompts if isinstance(p, list)]
    assert QUESTION.question in judged[0] and "END-OF-TEXT" not in judged[0]
    assert steps[0].sub_answer == "Shirley Temple" and steps[0].local == [0.01] * 10 + [0.0] * 2  # unparseable: 0


def test_label_with_rerun_global_utility(setup):
    index, agent, trajectories = setup
    assert trajectories[0].em == 1.0
    config = LabelConfig(local="embedder", min_local=0.0, negatives=3)
    pairs, stats = label(trajectories, IndexRetriever(index), config, agent=agent, index=index)
    assert stats["steps"] == 2 and stats["kept"] == len(pairs) >= 1
    for pair in pairs:
        assert pair.query.startswith(QUESTION.question + " [SEP] ")  # the training input
        assert all(p.em == 1.0 for p in pair.positives) and len(pair.negatives) == 3
        assert {p.id for p in pair.positives} <= {"k1", "s1"}
    bridge = next(p for p in pairs if p.turn == 1)  # the bridge search: only the answer passage gives EM 1
    assert [p.id for p in bridge.positives] == ["s1"] and all(p.em == 0.0 for p in bridge.negatives)


def test_candidates_come_from_what_the_agent_sent(setup):
    """Round 1 (upstream step2): candidates for the plain query the agent searched with, not the [SEP] input."""
    index, _, trajectories = setup
    retriever = IndexRetriever(index)
    steps = collect_steps(trajectories, retriever, LabelConfig(candidates=3))
    turns = trajectories[0].turns
    assert [s.candidate_query for s in steps] == [turns[s.turn].query for s in steps]  # agent: "{query}"
    assert all(s.retriever_query == f"{QUESTION.question} [SEP] {s.query}" for s in steps)
    for step in steps:
        assert [p.id for p in step.candidates] == [p.id for p in retriever.retrieve([step.query], 3)[0]]
    sep = collect_steps(trajectories, retriever, LabelConfig(candidates=3, candidate_template="{question} [SEP] {query}"))
    assert [s.candidate_query for s in sep] == [s.retriever_query for s in steps]


@pytest.fixture(scope="module")
def judge_url():
    """A judge: infers the sub-answers; scores passages naming Shirley Temple 90, others 5."""

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        if "<sub-answer>" in prompt:
            count = int(re.search(r"holds (\d+) search queries", prompt).group(1))
            text = " ".join(["<sub-answer> Shirley Temple </sub-answer>"] * count)
        else:
            blocks = re.findall(r"Passage \[\d+\]: (.*?)(?=\nPassage \[|\n\n)", prompt, re.S)
            text = " ".join("90" if "Shirley Temple" in block else "5" for block in blocks)
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    with running_server(app) as base:
        yield f"{base}/v1"


def test_label_with_llm_judge_and_containment(setup, judge_url):
    index, agent, trajectories = setup
    judge = OpenAICompatibleBackend(judge_url, "judge", timeout=10, max_retries=0)
    config = LabelConfig(local="llm_judge", global_utility="containment", judge_batch=2, negatives=4)
    pairs, stats = label(trajectories, IndexRetriever(index), config, judge=judge)
    # only s1 contains the answer; the judge gives it 0.9 (it names Shirley Temple), so both steps keep it
    assert stats["kept"] == 2 == stats["steps"]
    for pair in pairs:
        assert [(p.id, p.local, p.em) for p in pair.positives] == [("s1", 0.9, 1.0)]
        assert {p.id: p.local for p in pair.negatives}["k1"] == 0.9  # judged relevant, but no answer in it
        assert {p.id: p.local for p in pair.negatives}["b1"] == 0.05


def test_rerun_policy_is_the_one_recorded(setup):
    _, _, trajectories = setup
    heuristic = PolicyRecord(spec="heuristic")
    other = PolicyRecord(spec="openai:http://127.0.0.1:9/v1", model="qwen")
    assert trajectories[0].policy == heuristic  # the agent records its policy
    assert rerun_policy(trajectories) == heuristic
    assert rerun_policy(trajectories, heuristic) == heuristic
    with pytest.raises(EmbedkitError, match="produced by heuristic.*--allow-policy-mismatch"):
        rerun_policy(trajectories, other)
    assert rerun_policy(trajectories, other, allow_mismatch=True) == other
    bare = [t.model_copy(update={"policy": None}) for t in trajectories]
    with pytest.raises(EmbedkitError, match="do not record"):
        rerun_policy(bare)
    assert rerun_policy(bare, other) == other
    mixed = [trajectories[0], trajectories[0].model_copy(update={"policy": other})]
    with pytest.raises(EmbedkitError, match="several policies"):
        rerun_policy(mixed)


def test_cli_label(setup, index_path, tmp_path, capsys):
    _, _, trajectories = setup
    path = write_trajectories(tmp_path / "t.jsonl", trajectories)
    out = tmp_path / "pairs.jsonl"
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out", str(out),
                 "--local", "embedder", "--global", "containment", "--min-local", "0", "--set", "negatives=4"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[0])["kept"] == 2
    assert [p.positives[0].id for p in read_pairs(out)] == ["s1", "s1"]
    # global utility re-runs steps with the policy recorded in the trajectories (here the heuristic one)
    rerun = tmp_path / "rerun.jsonl"
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out", str(rerun),
                 "--local", "embedder", "--min-local", "0", "--set", "negatives=3"]) == 0  # fmt: skip
    assert {p.turn for p in read_pairs(rerun)} >= {1}
    mismatch = ["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out",
                str(tmp_path / "other.jsonl"), "--local", "embedder", "--agent-llm", "openai:http://127.0.0.1:9/v1"]  # fmt: skip
    assert main(mismatch) == 2 and "--allow-policy-mismatch" in capsys.readouterr().err
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out",
                 str(tmp_path / "judge.jsonl"), "--local", "llm_judge"]) == 2  # no judge given  # fmt: skip
    assert main(["agentic-r", "label", "--trajectories", str(path), "--index", str(index_path), "--out",
                 str(tmp_path / "bad.jsonl"), "--set", "judge_input=everything"]) == 2  # fmt: skip
    (tmp_path / "broken.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    assert main(["agentic-r", "label", "--trajectories", str(tmp_path / "broken.jsonl"), "--index",
                 str(index_path), "--out", str(tmp_path / "p2.jsonl"), "--local", "embedder"]) == 2  # fmt: skip
    for name in ("judge.jsonl", "p2.jsonl", "other.jsonl", "bad.jsonl"):
        assert not (tmp_path / name).exists()


def test_sub_answers_once_per_trajectory(setup):
    index, _, trajectories = setup

    def reply(prompt):
        if "<sub-answer>" in prompt:
            return " ".join(["<sub-answer> Shirley Temple </sub-answer>"] * len(trajectories[0].searches))
        return " ".join(["90"] * prompt.count("Passage ["))

    judge = ScriptedJudge(reply)
    config = LabelConfig(local="llm_judge", global_utility="containment", negatives=3)
    label(trajectories, IndexRetriever(index), config, judge=judge, chunk=1)  # two steps, one trajectory
    assert sum("<sub-answer>" in p[-1]["content"] for p in judge.prompts) == 1
