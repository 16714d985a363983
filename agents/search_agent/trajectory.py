"""What an agent run records: one `Trajectory` per question, written as jsonl, and summary metrics.

    write_trajectories("runs/agent.jsonl", trajectories)
    print(summarize(read_trajectories("runs/agent.jsonl")))   # EM, F1, search-turn statistics
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedkit.data.records import read_records, write_records
from embedkit.passage import Passage


class Turn(BaseModel):
    """One model turn and, for a search, what the retriever returned and what was injected."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="the model's text for this turn, stop string included")
    action: Literal["search", "answer", "invalid"]
    query: str | None = Field(None, description="the search query the model wrote")
    retriever_query: str | None = Field(None, description="the text sent to the retriever (query_template)")
    passages: list[Passage] = Field(default_factory=list, description="what the retriever returned, best first")
    information: str = Field("", description="text appended after the turn (information block or feedback)")
    error: str | None = Field(None, description="retrieval failure, recorded instead of stopping the run")
    retrieval_attempts: int = 0


class PolicyRecord(BaseModel):
    """Which policy produced a trajectory, in `--llm` terms, so that it can be rebuilt."""

    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="heuristic, hf:PATH or openai:URL")
    model: str | None = Field(None, description="the model's name at an openai: endpoint")
    chat: bool = True
    mode: Literal["chat", "completion", "search_r1"] | None = Field(None, description="the prompt mode, if set")
    tokenizer: str | None = Field(None, description="the served model's tokenizer (search_r1 mode at openai:)")

    def describe(self) -> str:
        shown = f"mode {self.mode}" if self.mode else ("chat" if self.chat else "no chat")
        return self.spec + (f" (model {self.model})" if self.model else "") + f", {shown}"


class Trajectory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    answers: list[str] = Field(default_factory=list, description="the accepted answers; empty when unknown")
    data_source: str = Field("", description="the data set the question comes from (Search-R1's data_source)")
    prompt: str = ""
    turns: list[Turn] = Field(default_factory=list)
    prediction: str | None = None
    status: Literal["answered", "max_turns", "running", "error"] = "running"
    error: str | None = Field(None, description="why the run of this question failed (LLM endpoint down)")
    em: float | None = Field(None, description="exact match of the last <answer>; None without gold answers")
    f1: float | None = None
    sub_em: float | None = Field(None, description="1 when an accepted answer occurs in the prediction")
    policy: PolicyRecord | None = Field(None, description="the policy that produced it (Agentic-R re-runs it)")

    @property
    def transcript(self) -> str:
        """Everything after the prompt: model turns interleaved with injected information."""
        return "".join(turn.output + turn.information for turn in self.turns)

    @property
    def searches(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.action == "search"]

    def retrieved_ids(self) -> list[str]:
        """Ids of every passage shown to the agent, in order of appearance, without repeats."""
        seen: dict[str, None] = {}
        for turn in self.searches:
            for passage in turn.passages:
                seen.setdefault(passage.id, None)
        return list(seen)


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> Path:
    """Write one JSON object per line, atomically."""
    return write_records(path, trajectories)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    return read_records(path, Trajectory, what="trajectory", allow_empty=True)


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """EM / F1 over questions with gold answers, and search-turn statistics over all questions."""
    scored = [t for t in trajectories if t.em is not None]
    searches = [len(t.searches) for t in trajectories]
    histogram = Counter(searches)
    total = max(len(trajectories), 1)
    summary: dict[str, float] = {
        "questions": float(len(trajectories)),
        "scored": float(len(scored)),
        "EM": sum(t.em or 0.0 for t in scored) / len(scored) if scored else float("nan"),
        "F1": sum(t.f1 or 0.0 for t in scored) / len(scored) if scored else float("nan"),
        "answered": sum(t.status == "answered" for t in trajectories) / total,
        "searches_mean": sum(searches) / total,
        "searches_max": float(max(searches, default=0)),
        "invalid_turns": float(sum(turn.action == "invalid" for t in trajectories for turn in t.turns)),
        "retrieval_failures": float(sum(turn.error is not None for t in trajectories for turn in t.turns)),
    }
    for count in sorted(histogram):
        summary[f"searches={count}"] = histogram[count] / total
    return summary
