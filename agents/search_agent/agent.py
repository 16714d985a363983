"""The search-agent loop: policy turn → parse → retrieve → inject, until an answer or the turn limit.

The loop is Search-R1's: `max_turns` rounds in which a search is run and its `<information>` block appended
(an invalid turn gets corrective feedback and uses a round), then one last turn for the answer in which a
search is not run. A trajectory that has not answered by then ends with status `max_turns`.

    agent = SearchAgent(HeuristicPolicy(), IndexRetriever.from_path("indexes/hotpotqa"), AgentConfig())
    trajectories = agent.run(load_questions("questions.jsonl"))
    print(summarize(trajectories))

Nothing a question does stops the run: unparseable output gets corrective feedback and uses up a turn,
retrieval failures are retried and then recorded in the turn (the model sees "search failed"), an LLM
endpoint that stays down marks that batch's trajectories `error`, and questions without gold answers are
run but not scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agents.retrieval import Passage, Retriever
from agents.search_agent.backends import policy_record
from agents.search_agent.config import AgentConfig
from agents.search_agent.evaluate import score
from agents.search_agent.format import parse_action, render_information, restore_stop
from agents.search_agent.policy import Policy
from agents.search_agent.questions import Question
from agents.search_agent.resilient import ResilientRetriever
from agents.search_agent.trajectory import Trajectory, Turn
from embedkit.errors import EmbedkitError

log = logging.getLogger(__name__)


class SearchAgent:
    def __init__(self, policy: Policy, retriever: Retriever, config: AgentConfig | None = None) -> None:
        self.policy = policy
        self.config = config or AgentConfig()
        self.retriever = ResilientRetriever(
            retriever,
            timeout_s=self.config.retrieval_timeout_s,
            retries=self.config.retrieval_retries,
            backoff_s=self.config.retrieval_backoff_s,
        )

    def start(self, question: Question) -> Trajectory:
        return Trajectory(id=question.id, question=question.question, answers=list(question.answers),
                          data_source=question.data_source, prompt=self.first_message(question),
                          policy=policy_record(self.policy))  # fmt: skip

    def first_message(self, question: Question) -> str:
        """The first user message, from `prompt_template` or the question file's own prompt (`prompt_source`)."""
        source = self.config.prompt_source
        if source == "file" and question.prompt is None:
            raise EmbedkitError(f"question '{question.id}' has no prompt of its own (prompt_source: file needs "
                                "a prompt[0].content that is more than the question)")  # fmt: skip
        if source != "template" and question.prompt is not None:
            return question.prompt
        return self.config.prompt_template.format(question=question.question)

    def run(self, questions: Sequence[Question], *, progress: Callable[[int], None] | None = None) -> list[Trajectory]:
        """Run every question to completion, `config.batch_size` at a time."""
        trajectories = [self.start(q) for q in questions]
        self.complete(trajectories, progress=progress)
        return trajectories

    def complete(self, trajectories: Sequence[Trajectory], *, progress: Callable[[int], None] | None = None) -> None:
        """Advance running trajectories (fresh or resumed mid-way) until each answers or runs out of turns."""
        size = self.config.batch_size
        for start in range(0, len(trajectories), size):
            batch = trajectories[start : start + size]
            try:
                self._advance(batch)
            except Exception as error:  # LLM endpoint down, context overflow…: record it, go on with the next batch
                log.error("agent batch failed: %s: %s", type(error).__name__, error)
                for trajectory in batch:
                    if trajectory.status == "running":
                        trajectory.status = "error"
                        trajectory.error = f"{type(error).__name__}: {str(error)[:500]}"
            for trajectory in batch:
                score(trajectory)
            if progress is not None:
                progress(len(batch))

    def continue_with(self, trajectory: Trajectory, step: int, passages: Sequence[Passage]) -> Trajectory:
        """A copy of `trajectory` cut after search turn `step` (index into its turns) whose retrieval result
        is replaced by `passages`, ready for `complete` — Agentic-R's global-utility probe."""
        turns = [turn.model_copy(deep=True) for turn in trajectory.turns[: step + 1]]
        probe = turns[step]
        if probe.action != "search":
            raise EmbedkitError(f"turn {step} of '{trajectory.id}' is not a search")
        probe.passages = list(passages)
        probe.error = None
        probe.information = render_information(passages, self.config.passage_template)
        # Searches run only in the first max_turns turns, so the probed run always has its answer turn left.
        status = "running" if len(turns) <= self.config.max_turns else "max_turns"
        return trajectory.model_copy(update={"turns": turns, "prediction": None, "status": status,
                                             "em": None, "f1": None, "sub_em": None, "error": None})  # fmt: skip

    def _advance(self, batch: Sequence[Trajectory]) -> None:
        config = self.config
        while running := [t for t in batch if t.status == "running"]:
            outputs = self.policy.act(running, config)
            if len(outputs) != len(running):
                raise EmbedkitError(f"policy returned {len(outputs)} turns for {len(running)} trajectories")
            searches: list[Turn] = []
            for trajectory, raw in zip(running, outputs, strict=True):
                output = restore_stop(raw or "")
                action = parse_action(output)
                turn = Turn(output=output, action=action.kind)
                # Search-R1's loop: max_turns rounds that may search, then one turn whose searches are not run.
                final = len(trajectory.turns) >= config.max_turns
                trajectory.turns.append(turn)
                if action.kind == "answer":
                    trajectory.prediction = action.content
                    trajectory.status = "answered"
                    continue
                if final:
                    if action.kind == "search":
                        turn.query = action.content
                    trajectory.status = "max_turns"
                    continue
                if action.kind == "search":
                    turn.query = action.content
                    turn.retriever_query = config.query_template.format(
                        question=trajectory.question, query=action.content
                    )
                    searches.append(turn)
                else:
                    turn.information = config.invalid_feedback
            if searches:
                result = self.retriever.retrieve([t.retriever_query or "" for t in searches], config.top_k)
                for turn, passages in zip(searches, result.passages, strict=True):
                    turn.passages = list(passages)
                    turn.error = result.error
                    turn.retrieval_attempts = result.attempts
                    turn.information = render_information(passages, config.passage_template, error=result.error)
