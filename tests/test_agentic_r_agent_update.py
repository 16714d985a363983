"""Agentic-R's agent update: RL rollouts search the retriever with the input the agent is evaluated with,
"{question} [SEP] {query}", each prompt's searches bound to its own question (a tiny policy taught to search)."""

from __future__ import annotations

import pytest

from agents.agentic_r import question_bound_engine
from agents.search_agent import AgentConfig
from agents.search_agent.tool import SearchTool
from embedkit.errors import EmbedkitError
from embedkit.passage import Passage

PROMPTS = {"first prompt:": "who wrote hamlet", "second prompt:": "where is paris"}


class EchoRetriever:
    """A retriever whose one passage names the input it received; keeps every input."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    def retrieve(self, queries, k=3):
        self.inputs += list(queries)
        return [[Passage(id=str(len(self.inputs)), title="echo", text=q)] for q in queries]


@pytest.fixture(scope="module")
def taught_policy():
    """The toy char-level policy after a supervised warm-up on '<search> same </search>' for both prompts."""
    from agents.rl.config import RLConfig
    from agents.rl.tasks import Example
    from agents.rl.trainer import load_policy
    from agents.rl.warmup import sft_warmup

    model, tokenizer = load_policy(RLConfig())
    examples = [Example(prompt, ["x"], "search", "<search> same </search>") for prompt in PROMPTS]
    sft_warmup(model, tokenizer, examples, steps=60, lr=5e-3, batch_size=2, seed=0)
    return model.eval(), tokenizer


@pytest.mark.slow
def test_rollouts_send_each_prompts_question(taught_policy, one_torch_thread):
    from agents.rl.rollout import RolloutEngine, RolloutSettings

    model, tokenizer = taught_policy
    retriever = EchoRetriever()
    tool = SearchTool(retriever, AgentConfig(top_k=1, query_template="{question} [SEP] {query}"))
    settings = RolloutSettings(max_new_tokens=80, temperature=0.0, max_turns=1)
    plain = RolloutEngine(model, tokenizer, settings, tool)
    with pytest.raises(EmbedkitError, match="bind"):  # the unbound tool refuses to guess the question
        plain.sample(list(PROMPTS), group_size=1)
    engine = question_bound_engine(plain, tool, PROMPTS)
    states = engine.sample(list(PROMPTS), group_size=2)
    assert all(state.tool_calls == ["same"] for state in states)  # both prompts search the same words …
    # … and the retriever still gets each prompt's own question, as the evaluated agent sends it
    assert sorted(set(retriever.inputs)) == ["where is paris [SEP] same", "who wrote hamlet [SEP] same"]
    for state in states:
        assert PROMPTS[state.prompt] in state.text  # the injected passage came from its own question's search
        assert 0 in state.loss_mask  # the tool's output is masked out of the policy loss (state masking)
    assert engine.tool is tool
