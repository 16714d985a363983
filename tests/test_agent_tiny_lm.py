"""The full search-agent loop with a tiny random-init causal LM, warmed up on one demonstration:
generation stops at </search>, retrieval is injected, <information> tokens are masked out of the loss,
the answer is parsed and scored — through `SearchAgent` and through the RL rollout engine."""

from __future__ import annotations

import pytest
import torch

from agents.llm import TransformersBackend
from agents.retrieval import IndexRetriever
from agents.rl.rewards import RewardBatch, build_reward
from agents.rl.rollout import RolloutEngine, RolloutSettings
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from agents.rl.warmup import demonstration_tokens, sft_warmup
from agents.search_agent import AgentConfig, LLMPolicy, SearchAgent
from agents.search_agent.questions import Question
from agents.search_agent.tool import SearchTool, trajectory_example
from embedkit.data import Document
from embedkit.index import Index, build_dense_index

DOCS = [
    ("c1", "cats", "cats hunt mice at night."),
    ("c2", "dogs", "dogs fetch sticks in parks."),
    ("c3", "bees", "bees make honey from nectar."),
]
CONFIG = AgentConfig(prompt_template="q: {question}\n", top_k=1, max_turns=3, max_new_tokens=40,
                     passage_template="{title}: {text}", batch_size=4)  # fmt: skip
QUESTION = Question(id="q1", question="what do cats hunt?", answers=["mice"])


class Scripted:
    """A teacher that writes the demonstration turns (the retrieval in between is real)."""

    def act(self, trajectories, config):
        return ["<search> cats </search>" if not t.turns else "<answer> mice </answer>" for t in trajectories]


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # slow: SFT warm-up of a tiny LM


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, minilm_encoder):
    docs = [Document(id=i, title=t, text=x) for i, t, x in DOCS]
    out = tmp_path_factory.mktemp("tiny") / "index"
    build_dense_index(docs, minilm_encoder, out, quiet=True)
    retriever = IndexRetriever(Index.load(out))
    retriever.retrieve(["warm-up"], k=1)  # loads the query encoder before any timed call
    return retriever


@pytest.fixture(scope="module")
def warmed(retriever):
    torch.manual_seed(0)
    demo = SearchAgent(Scripted(), retriever, CONFIG).run([QUESTION])[0]
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm(tokenizer, n_positions=256, n_embd=64, n_layer=2)
    example = trajectory_example(demo, eos=tokenizer.eos_token)
    losses = sft_warmup(model, tokenizer, [example], steps=120, lr=3e-3, batch_size=4)
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    return model, tokenizer, demo


def test_demonstration_mask_covers_exactly_the_information(warmed):
    _, tokenizer, demo = warmed
    example = trajectory_example(demo, eos=tokenizer.eos_token)
    ids, mask = demonstration_tokens(tokenizer, example)
    masked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m == 0], skip_special_tokens=False)
    information = demo.turns[0].information.strip()
    assert information.startswith("<information>cats: cats hunt mice") and information in masked
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m == 1], skip_special_tokens=False)
    assert "<search> cats </search>" in trained and "<answer> mice </answer>" in trained
    assert "<information>" not in trained


def test_agent_with_tiny_lm_searches_reads_and_answers(warmed, retriever):
    model, tokenizer, _ = warmed
    agent = SearchAgent(LLMPolicy(TransformersBackend(model, tokenizer), chat=False), retriever, CONFIG)
    trajectory = agent.run([QUESTION, Question(id="q2", question="what do cats hunt?", answers=[])])[0]
    first, second = trajectory.turns[0], trajectory.turns[1]
    assert first.output.endswith("</search>") and "<information>" not in first.output  # stopped at </search>
    assert first.action == "search" and first.query == "cats"
    assert [p.id for p in first.passages] == ["c1"] and "cats hunt mice" in first.information
    assert second.action == "answer" and trajectory.prediction == "mice"
    assert trajectory.status == "answered" and trajectory.em == 1.0 and trajectory.f1 == 1.0


def test_rl_rollout_with_search_tool_masks_information(warmed, retriever):
    model, tokenizer, demo = warmed
    tool = SearchTool(retriever, CONFIG)
    settings = RolloutSettings(max_new_tokens=120, temperature=0.0, max_turns=2)  # the shared template
    engine = RolloutEngine(model, tokenizer, settings, tool=tool)
    rollout = engine.sample([demo.prompt], group_size=1)[0]
    assert tool.calls == ["cats"] and rollout.turns == 1
    masked = tokenizer.decode([t for t, m in zip(rollout.response_ids, rollout.loss_mask, strict=True) if m == 0])
    assert masked == "\n\n<information>cats: cats hunt mice at night.</information>\n\n"
    policy_text = tokenizer.decode([t for t, m in zip(rollout.response_ids, rollout.loss_mask, strict=True) if m])
    assert policy_text.startswith("<search> cats </search>") and "<information>" not in policy_text
    reward = build_reward("exact_match")(RewardBatch(prompts=[demo.prompt], responses=[rollout.text],
                                                     ground_truths=[["mice"]]))  # fmt: skip
    assert reward == [1.0]


def test_agent_and_rl_rollout_put_the_same_bytes_around_the_same_passages(warmed, retriever):
    """Training (RL rollout + SearchTool) and evaluation (SearchAgent) see one token stream."""
    model, tokenizer, demo = warmed
    engine = RolloutEngine(model, tokenizer, RolloutSettings(max_new_tokens=120, temperature=0.0, max_turns=2),
                           tool=SearchTool(retriever, CONFIG))  # fmt: skip
    rollout = engine.sample([demo.prompt], group_size=1)[0]
    masked = tokenizer.decode([t for t, m in zip(rollout.response_ids, rollout.loss_mask, strict=True) if m == 0])
    agent = SearchAgent(LLMPolicy(TransformersBackend(model, tokenizer), chat=False), retriever, CONFIG)
    trajectory = agent.run([QUESTION])[0]
    assert [p.id for p in trajectory.turns[0].passages] == ["c1"]
    assert masked == trajectory.turns[0].information == demo.turns[0].information  # byte for byte
    assert rollout.text == trajectory.transcript  # the whole response, tags, newlines and passages included
