"""Typed settings of Agentic-R: labelling passage utility, training the retriever, iterating with the agent.

    label = LabelConfig()                       # the paper's settings: top-20 candidates, local ≥ 0.6, 3 pos, 15 neg
    train = RetrieverTrainConfig()              # e5-base-v2, query:/passage: prefixes, lr 2e-5, 2 epochs, τ = 0.01
    config = IterateConfig.from_yaml("configs/agentic_r.yaml")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from agents.search_agent.config import AgentConfig
from embedkit.config import YamlConfig

AGENTIC_R_QUERY = "{question} [SEP] {query}"


class _Config(YamlConfig):
    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = None, overrides: Mapping[str, Any] | None = None):
        """Like `YamlConfig.from_yaml`; overrides that are None (flags not given) are ignored."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return super().from_yaml(path, section=section, overrides=given)


class LabelConfig(_Config):
    """How candidate passages are scored and turned into training pairs."""

    candidates: int = Field(20, ge=2, description="top-N passages of the current retriever scored per search step")
    query_template: str = Field(AGENTIC_R_QUERY, description="retriever input for candidates and training")
    local: Literal["llm_judge", "embedder"] = Field(
        "embedder", description="local utility: an LLM judge (listwise, 0-100) or the embedder's cosine (proxy)"
    )
    global_utility: Literal["rerun", "containment"] = Field(
        "rerun", description="global utility: re-run the agent with only this passage, or answer containment (proxy)"
    )
    judge_batch: int = Field(10, ge=1, description="passages per listwise judge prompt")
    judge_max_new_tokens: int = Field(160, gt=0)
    min_local: float = Field(0.6, ge=0.0, le=1.0, description="skip a step whose best candidate scores lower")
    max_positives: int = Field(3, ge=1)
    negatives: int = Field(15, ge=0)
    seed: int = 0


class RetrieverTrainConfig(_Config):
    """sentence-transformers training with InfoNCE (MultipleNegativesRankingLoss, scale = 1 / temperature)."""

    base_model: str = Field("intfloat/e5-base-v2", description="every round starts again from this model")
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    temperature: float = Field(0.01, gt=0)
    learning_rate: float = 2e-5
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=2, description="rows per step; each row adds its positive and hard negatives")
    hard_negatives: int = Field(15, ge=0, description="hard negatives per row (fewer if a pair has fewer)")
    max_length: int | None = Field(None, description="truncate training inputs (tokens); the index keeps the model's limit")
    warmup_ratio: float = 0.1
    seed: int = 0
    encode_batch_size: int = Field(64, gt=0, description="batch size for re-indexing")


class AgentUpdateConfig(_Config):
    """The agent step of each round: `none` (deterministic or frozen policy) or `grpo` via `agents.rl`."""

    name: Literal["none", "grpo"] = "none"
    rl_config: str | None = Field(None, description="an agents.rl YAML (policy, algorithm, trainer) for grpo")


class IterateConfig(_Config):
    """K rounds of: run the agent → label → train the retriever from the base → re-index → update the agent."""

    rounds: int = Field(2, ge=1)
    questions: str = Field(description="jsonl questions with answers (see agents.search_agent.questions)")
    question_start: int = Field(0, ge=0)
    question_limit: int | None = Field(None, ge=1)
    corpus: str = Field(description="the corpus to (re-)index: BEIR folder, corpus.jsonl, …")
    base_index: str | None = Field(None, description="an index of the corpus built with base_model (else built)")
    output_dir: str = "runs/agentic_r"
    policy: str = Field("heuristic", description="'heuristic' or an LLM spec: hf:PATH or openai:URL")
    policy_model: str | None = Field(None, description="model name at an OpenAI-compatible policy endpoint")
    policy_chat: bool = Field(True, description="chat messages (instruction models) or plain continuation")
    agent: AgentConfig = AgentConfig()
    label: LabelConfig = LabelConfig()
    train: RetrieverTrainConfig = RetrieverTrainConfig()
    agent_update: AgentUpdateConfig = AgentUpdateConfig()
