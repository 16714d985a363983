"""Typed settings of a search agent: prompt, stop strings, turn limit, top-k, retrieval robustness.

    config = AgentConfig.from_yaml("configs/agent.yaml")
    config = AgentConfig(max_turns=5, top_k=3, query_template="{question} [SEP] {query}")
    config = AgentConfig(prompt_mode="search_r1", prompt_template=Path("my_prompt.txt").read_text())
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from agents.search_agent.format import PASSAGE_TEMPLATE
from embedkit.config import YamlConfig, load_yaml_mapping

# Our own wording of the Search-R1 instruction; the tags and their meaning are the protocol, not the text. Point
# prompt_template at the instruction a checkpoint was trained with to evaluate it as trained.
DEFAULT_PROMPT = (
    "Answer the question below. Think step by step inside <think> and </think> whenever you receive new "
    "information. When you are missing a fact, search for it by writing <search> your query </search>; the "
    "top results will be shown to you between <information> and </information>. You may search several "
    "times. Once you know the answer, write it inside <answer> and </answer> as a short phrase without "
    "explanation, for example <answer> Paris </answer>.\nQuestion: {question}\n"
)

# Shown to the model after output that is neither a search nor an answer, so it can recover.
DEFAULT_INVALID_FEEDBACK = (
    "\nMy previous action was not valid. To search I must write <search> query </search>; to finish I must "
    "write <answer> answer </answer>. Let me try again.\n"
)


class AgentConfig(YamlConfig):
    """Everything that shapes an agent run except the policy and the retriever."""

    prompt_template: str = Field(DEFAULT_PROMPT, description="the first user message; must contain {question}")
    stop: list[str] = Field(default_factory=lambda: ["</search>", "</answer>"],
                            description="generation stops after any of these; the stop string is kept")
    max_turns: int = Field(
        4, ge=1, le=32,
        description="search rounds per question, as Search-R1 and Agentic-R count them: the model may search in "
                    "each of its first max_turns turns (an invalid turn uses one up); one more turn follows in which "
                    "searches are not run, so the answer turn is never counted",
    )  # fmt: skip
    prompt_mode: Literal["chat", "completion", "search_r1"] = Field(
        "chat",
        description="chat: turns as chat messages; completion: prompt + transcript as one plain string; "
                    "search_r1: the chat template on the first user message only, then one assistant turn the "
                    "model continues with every <information> block inside it (Search-R1's token stream)",
    )  # fmt: skip
    prompt_source: Literal["auto", "template", "file"] = Field(
        "auto",
        description="the first user message: `template` (prompt_template), `file` (the question file's own "
                    "prompt[0].content, e.g. Search-R1's parquet), `auto` (the file's prompt when it is more than "
                    "the question, else the template)",
    )  # fmt: skip
    top_k: int = Field(3, ge=1, le=100, description="passages injected per search")
    max_new_tokens: int = Field(512, gt=0, description="token budget of one model turn")
    temperature: float = Field(0.0, ge=0.0, description="0 decodes greedily")
    query_template: str = Field(
        "{query}",
        description="what the retriever receives; Agentic-R retrievers are trained on '{question} [SEP] {query}'",
    )
    passage_template: str = Field(PASSAGE_TEMPLATE, description="one passage in <information>")
    invalid_feedback: str = DEFAULT_INVALID_FEEDBACK
    retrieval_timeout_s: float = Field(30.0, gt=0, description="one retrieval call longer than this fails")
    retrieval_retries: int = Field(2, ge=0, description="extra attempts after a failed or timed-out call")
    retrieval_backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff * 2**i")
    batch_size: int = Field(16, gt=0, description="questions advanced together (one LLM / retriever batch)")

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("prompt_template must contain {question}")
        return value

    @field_validator("query_template")
    @classmethod
    def _has_query(cls, value: str) -> str:
        if "{query}" not in value:
            raise ValueError("query_template must contain {query}")
        return value

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> AgentConfig:  # fmt: skip
        """Load a config file: its `agent` section when it has one, else the whole file; `overrides` win."""
        data = load_yaml_mapping(path) if section is None else {}
        # A file of several sections (e.g. configs/agentic_r.yaml) holds the agent under `agent`.
        if section is None and any(isinstance(value, dict) for value in data.values()):
            section = "agent"
        return super().from_yaml(path, section=section, overrides=overrides)
