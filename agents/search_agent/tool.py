"""The search tool for token-level RL rollouts (`agents.rl.rollout.RolloutEngine`): query in, passages out.

    engine = RolloutEngine(model, tokenizer, RolloutSettings(...), tool=SearchTool(retriever, AgentConfig()))

It renders passages exactly as `SearchAgent` does (`render_passages`: `Doc i(Title: t) text`, top-k), retries
and times out the same way, and answers a failed retrieval with "(search failed: …)" instead of raising, so an
RL step survives a flaky retrieval server. The rollout engine wraps the result in the shared
`agents.search_agent.format.INFORMATION_TEMPLATE` (as `SearchAgent` does) and masks it out of the policy loss.
The engine's tool sees only the query; a `query_template` with {question} (Agentic-R's "{question} [SEP]
{query}") needs the tool bound to the rollout's question with `bind(question)`, so that training and
evaluation send the retriever the same input.
"""

from __future__ import annotations

import copy

from agents.retrieval import Retriever
from agents.search_agent.config import AgentConfig
from agents.search_agent.format import render_passages
from agents.search_agent.resilient import ResilientRetriever
from embedkit.errors import EmbedkitError


class SearchTool:
    def __init__(self, retriever: Retriever, config: AgentConfig | None = None, *,
                 question: str | None = None) -> None:  # fmt: skip
        self.config = config or AgentConfig()
        self.question = question
        self.retriever = ResilientRetriever(retriever, timeout_s=self.config.retrieval_timeout_s,
                                            retries=self.config.retrieval_retries,
                                            backoff_s=self.config.retrieval_backoff_s)  # fmt: skip
        self.calls: list[str] = []
        self.failures = 0

    @property
    def needs_question(self) -> bool:
        return "{question}" in self.config.query_template

    def bind(self, question: str) -> SearchTool:
        """This tool for one question (same retriever): `{question}` in `query_template` is filled with it."""
        bound = copy.copy(self)
        bound.question = question
        return bound

    def __call__(self, query: str) -> str:
        if self.needs_question and self.question is None:
            raise EmbedkitError("query_template uses {question} but the tool is not bound to a question: "
                                "use SearchTool.bind(question) per rollout prompt")  # fmt: skip
        self.calls.append(query)
        text = self.config.query_template.format(question=self.question or "", query=query.strip() or " ")
        result = self.retriever.retrieve([text], self.config.top_k)
        if result.error is not None:
            self.failures += 1
            return f"(search failed: {result.error})"
        return render_passages(result.passages[0], self.config.passage_template)


def trajectory_example(trajectory, *, eos: str = ""):
    """An `agents.rl` demonstration (prompt + transcript) for supervised warm-up on agent trajectories.

    `agents.rl.warmup.demonstration_tokens` masks every `<information>` block out of the labels; corrective
    feedback after invalid turns is not inside such a block, so warm up on clean trajectories.
    """
    from agents.rl.tasks import Example

    return Example(trajectory.prompt, list(trajectory.answers), "search", trajectory.transcript + eos)
