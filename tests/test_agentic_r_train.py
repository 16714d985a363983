"""Agentic-R retriever training (sentence-transformers, InfoNCE τ = 0.01) and `embedkit agentic-r iterate`:
one real round over a small corpus with the bundled MiniLM, then a resumed run that redoes nothing."""

import json

import numpy as np
import pytest
import yaml

from agents.agentic_r import PairPassage, TrainingPair, pair_rows, read_pairs
from agents.search_agent import read_trajectories
from embedkit.cli import main
from embedkit.encoding import Encoder, EncoderConfig
from embedkit.errors import EmbedkitError
from embedkit.index import Index

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DOCS = [
    {"_id": "k1", "title": "Kiss and Tell (1945 film)",
     "text": "Kiss and Tell is a 1945 comedy film starring Shirley Temple as the teenager Corliss Archer."},
    {"_id": "s1", "title": "Shirley Temple",
     "text": "Shirley Temple Black was an American actress. She held the government position of Chief of Protocol."},
    {"_id": "a1", "title": "Adriana Trigiani",
     "text": "Adriana Trigiani is an Italian American author and film director based in Greenwich Village."},
    {"_id": "g1", "title": "Big Stone Gap (film)",
     "text": "Big Stone Gap is a 2014 romantic comedy film directed by Adriana Trigiani."},
    {"_id": "m1", "title": "Meet Corliss Archer", "text": "Meet Corliss Archer is a radio sitcom that ran on CBS."},
    {"_id": "v1", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
    {"_id": "b1", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast in an oven."},
]
QUESTIONS = [
    {"id": "q1", "question": "What government position was held by the actress who starred in Kiss and Tell?",
     "answers": ["Chief of Protocol"]},
    {"id": "q2", "question": "The director of the romantic comedy Big Stone Gap is based in what New York area?",
     "answers": ["Greenwich Village"]},
    {"id": "q3", "question": "What is this question without an answer?"},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pair_rows_keep_each_rows_negatives():
    """Rows hold their pair's first n negatives; no row is cut because another pair has fewer."""

    def pp(i):
        return PairPassage(id=i, title=f"T{i}", text=f"text {i}")

    pairs = [TrainingPair(qid="a", turn=0, query="qa", positives=[pp("1"), pp("2")],
                          negatives=[pp("3"), pp("4"), pp("9")]),
             TrainingPair(qid="b", turn=0, query="qb", positives=[pp("5")],
                          negatives=[pp("6"), pp("7"), pp("8"), pp("10")])]  # fmt: skip
    rows = pair_rows(pairs, hard_negatives=3)
    assert list(rows) == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert rows["anchor"] == ["qa", "qa", "qb"] and rows["positive"][0] == "T1 text 1"
    assert rows["negative_3"] == ["T9 text 9", "T9 text 9", "T8 text 8"]
    with pytest.raises(EmbedkitError, match="fewer than 4 negatives.*'a' turn 0 has 3"):
        pair_rows(pairs, hard_negatives=4)
    with pytest.raises(EmbedkitError, match="no training pairs"):
        pair_rows([], 15)


def test_agent_update_defaults_are_upstreams(tmp_path):
    """PPO (GAE + critic), KL 0.001, 4 searches per response, one response per prompt, over the RL config."""
    from agents.agentic_r import AgentUpdateConfig
    from agents.rl.config import RLConfig

    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump({"algorithm": {"estimator": "grpo", "kl_coef": 0.0},
                                    "rollout": {"group_size": 8, "settings": {"max_turns": 1}}}), encoding="utf-8")  # fmt: skip
    ppo = RLConfig.from_yaml(path, AgentUpdateConfig(name="ppo").rl_overrides())
    assert (ppo.algorithm.estimator, ppo.algorithm.kl_coef) == ("gae", 0.001)
    assert (ppo.rollout.settings.max_turns, ppo.rollout.group_size) == (4, 1)
    grpo = RLConfig.from_yaml(path, AgentUpdateConfig(name="grpo").rl_overrides())
    assert (grpo.algorithm.estimator, grpo.rollout.group_size) == ("grpo", 8)


def test_search_tool_sends_the_agents_retriever_input(tmp_path, minilm_encoder):
    """The RL tool builds the retriever input from the same template as the evaluated agent."""
    from agents.retrieval import IndexRetriever
    from agents.search_agent import AgentConfig, HeuristicPolicy, SearchAgent
    from agents.search_agent.questions import Question
    from agents.search_agent.tool import SearchTool
    from embedkit.data import Document
    from embedkit.index import build_dense_index

    path = build_dense_index([Document(id=d["_id"], title=d["title"], text=d["text"]) for d in DOCS], minilm_encoder,
                             tmp_path / "index", quiet=True)  # fmt: skip
    retriever = IndexRetriever.from_path(path)
    sent: list[str] = []

    class Recording:
        def retrieve(self, queries, k=3):
            sent.extend(queries)
            return retriever.retrieve(queries, k)

    config = AgentConfig(top_k=1, query_template="{question} [SEP] {query}")
    question = QUESTIONS[0]["question"]
    trajectory = SearchAgent(HeuristicPolicy(), Recording(), config).run([Question("q1", question, [])])[0]
    evaluated = [t.retriever_query for t in trajectory.searches]
    sent.clear()
    tool = SearchTool(Recording(), config)
    with pytest.raises(EmbedkitError, match="bind"):
        tool("Kiss and Tell")
    bound = tool.bind(question)
    for turn in trajectory.searches:
        bound(turn.query)
    assert sent == evaluated and sent[0].startswith(question + " [SEP] ")


@pytest.mark.slow
def test_iterate_one_round_and_resume(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    config = {
        "rounds": 1, "questions": str(questions), "corpus": str(corpus), "output_dir": str(tmp_path / "run"),
        "policy": "heuristic", "agent": {"top_k": 1},
        "label": {"global_utility": "containment", "local": "embedder", "min_local": 0.0, "negatives": 3},
        "train": {"base_model": MINILM, "query_prefix": "", "passage_prefix": "", "batch_size": 4, "hard_negatives": 3,
                  "epochs": 3, "learning_rate": 1e-4, "max_length": 48, "encode_batch_size": 8},
    }  # fmt: skip
    evaluation = tmp_path / "qa.jsonl"  # Search-R1's layout: per-source EM before and after the round
    evaluation.write_text("".join(json.dumps({"question": q["question"], "golden_answers": q["answers"],
                                              "data_source": source})
                                  + "\n" for q, source in zip(QUESTIONS[:2], ["hotpotqa", "nq"], strict=True)), encoding="utf-8")  # fmt: skip
    config["eval_questions"] = [str(evaluation)]
    path = tmp_path / "agentic_r.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["agentic-r", "iterate", "--config", str(path)]) == 0
    round_dir = tmp_path / "run" / "round_1"
    summary = json.loads((round_dir / "round.json").read_text())
    assert set(summary["eval"]["after"]["by_source"]) == set(summary["eval"]["before"]["by_source"]) == {"hotpotqa", "nq"}
    assert summary["eval"]["before"] == json.loads((tmp_path / "run" / "eval_base" / "metrics.json").read_text())
    after = read_trajectories(round_dir / "eval" / "trajectories.jsonl")
    assert all(t.searches[0].retriever_query.endswith(" [SEP] " + t.searches[0].query) for t in after)
    assert summary["agent"]["questions"] == 3 and summary["agent"]["scored"] == 2
    pairs = read_pairs(round_dir / "pairs.jsonl")
    assert summary["pairs"] == len(pairs) >= 2
    assert {p.positives[0].id for p in pairs} <= {"s1", "a1"}  # the passages holding the answers
    index = Index.load(round_dir / "index")
    assert index.manifest.encoder.model == str(round_dir / "retriever" / "model") and len(index) == len(DOCS)

    # the trained retriever separates each training query's positive from its negatives better than the base
    base = Encoder(EncoderConfig(model=MINILM))
    trained = index.encoder

    def margin(encoder):
        values = []
        for pair in pairs:
            q = encoder.encode_queries([pair.query])[0]
            pos = encoder.model.encode([p.joined() for p in pair.positives], normalize_embeddings=True)
            neg = encoder.model.encode([p.joined() for p in pair.negatives], normalize_embeddings=True)
            values.append(float(np.mean(pos @ q) - np.max(neg @ q)))
        return float(np.mean(values))

    assert margin(trained) > margin(base)

    capsys.readouterr()
    assert main(["agentic-r", "iterate", "--config", str(path)]) == 0  # resumes: nothing redone
    assert "round 1: done already" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**config, "rounds": 0}), encoding="utf-8")
    assert main(["agentic-r", "iterate", "--config", str(path)]) == 2
