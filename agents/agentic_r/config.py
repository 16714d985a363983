"""Typed settings of Agentic-R: labelling passage utility, training the retriever, iterating with the agent.

    label = LabelConfig()                       # the paper's settings: top-20 candidates, local ≥ 0.6, 3 pos, 15 neg
    train = RetrieverTrainConfig()              # e5-base-v2, query:/passage: prefixes, lr 2e-5, 2 epochs, τ = 0.01
    config = IterateConfig.from_yaml("configs/agentic_r.yaml", overrides={"label.min_local": 0.5})

Every default follows the official pipeline (github 8421BCD/Agentic-R: its step3/step4 scripts, tevatron and
Search-R1 forks); settings that differ from it are named as such in their description.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from agents.search_agent.config import AgentConfig
from embedkit.config import YamlConfig
from embedkit.defaults import DEFAULT_BATCH_SIZE

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
    query_template: str = Field(AGENTIC_R_QUERY, description="the training pairs' query (the retriever's input)")
    candidate_template: str | None = Field(
        None,
        description="retriever input that fetches the candidates; None (upstream): what the agent sent at that step "
        "(the turn's recorded retriever_query), i.e. the plain query in round 1 and the [SEP] input afterwards",
    )
    local: Literal["llm_judge", "embedder"] = Field(
        "llm_judge",
        description="local utility: an LLM judge (listwise, 0-100; upstream, needs --judge) or the embedder's cosine "
        "(a stand-in, chosen explicitly; every pair and the label stats record which scorer ran)",
    )
    global_utility: Literal["rerun", "containment"] = Field(
        "rerun", description="global utility: re-run the agent with only this passage, or answer containment (proxy)"
    )
    judge_batch: int = Field(10, ge=1, description="passages per listwise judge prompt")
    judge_max_new_tokens: int = Field(160, gt=0)
    judge_input: Literal["query", "question_and_query"] = Field(
        "query", description="what the judge rates against: the sub-query alone (upstream) or with the question"
    )
    judge_passage_chars: int | None = Field(
        None, ge=1, description="cut passages shown to the judge to this many characters; None (upstream): whole"
    )
    judge_unparseable: Literal["drop", "zero"] = Field(
        "drop", description="a judge reply that does not hold one integer per passage: drop the step (upstream) "
        "or score its passages 0",
    )  # fmt: skip
    sub_answers: Literal["trajectory", "step", "none"] = Field(
        "trajectory",
        description="the judge's reference answer per sub-query: inferred for every step at once from the whole "
        "trajectory and the gold answers (upstream; 'not sure' = no reference), per step from its passages, or none",
    )
    sub_answer_max_new_tokens: int = Field(256, gt=0)
    min_local: float = Field(0.6, ge=0.0, le=1.0, description="skip a step whose best candidate scores lower")
    max_positives: int = Field(3, ge=1, description="positives per step: the first candidates tied with the best")
    negatives: int = Field(
        15, ge=1, description="negatives per step, sampled from the candidates not tied with the best; a step with "
        "fewer is skipped (upstream: 16-passage groups)",
    )  # fmt: skip
    seed: int = 0


class RetrieverTrainConfig(_Config):
    """sentence-transformers training with InfoNCE (MultipleNegativesRankingLoss, scale = 1 / temperature)."""

    base_model: str = Field("intfloat/e5-base-v2", description="every round starts again from this model")
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    temperature: float = Field(0.01, gt=0)
    learning_rate: float = 2e-5
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=2, description="rows per step and process (upstream 32 on each of 8 GPUs)")
    hard_negatives: int = Field(15, ge=0, description="hard negatives per row: each pair's first n (pairs hold "
                                "`label.negatives`, ordered by utility)")
    gather_across_devices: bool = Field(
        True, description="under torchrun/accelerate, every process's passages are negatives of every query "
        "(upstream gathers across its 8 GPUs); no effect in one process",
    )  # fmt: skip
    max_length: int | None = Field(None, description="truncate training inputs (tokens); the index keeps the model's limit")
    warmup_ratio: float = 0.1
    seed: int = 0
    encode_batch_size: int = Field(DEFAULT_BATCH_SIZE, gt=0, description="batch size for re-indexing")


class AgentUpdateConfig(_Config):
    """The agent step of each round: `none` (the policy stays), or RL with `agents.rl` on the new retriever.

    Upstream trains the Search-R1 agent with PPO (GAE and a critic), KL coefficient 0.001, tool output masked
    out of the loss (state masking, always on in `agents.rl`), up to 4 searches per response and one response
    per prompt; those are the defaults here and override the `rl_config` file's values.
    """

    name: Literal["none", "ppo", "grpo"] = Field("none", description="ppo (upstream: gae + critic) or grpo")
    rl_config: str | None = Field(None, description="an agents.rl YAML (policy, trainer, rollout budget)")
    kl_coef: float = Field(0.001, ge=0.0, description="KL to the reference policy (upstream 0.001)")
    max_searches: int = Field(4, ge=1, description="tool calls per response (upstream max_turns 4)")
    group_size: int | None = Field(
        None, ge=1, description="responses per prompt; None: 1 for ppo (upstream n_agent 1), the file's for grpo"
    )

    def rl_overrides(self) -> dict[str, Any]:
        """Dotted `agents.rl` config keys this step sets."""
        overrides: dict[str, Any] = {
            "algorithm.estimator": "gae" if self.name == "ppo" else "grpo",
            "algorithm.kl_coef": self.kl_coef,
            "rollout.settings.max_turns": self.max_searches,
        }
        if self.group_size is not None or self.name == "ppo":
            overrides["rollout.group_size"] = self.group_size or 1
        return overrides


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
    eval_questions: list[str] = Field(
        default_factory=list,
        description="QA files in Search-R1's layout (question, golden_answers, data_source; jsonl or parquet): the "
        "agent is evaluated on them with the base retriever and after every round, EM / F1 / sub-EM per data_source",
    )
    eval_limit: int | None = Field(None, ge=1, description="questions per evaluation file (default: all)")
    agent: AgentConfig = AgentConfig()
    label: LabelConfig = LabelConfig()
    train: RetrieverTrainConfig = RetrieverTrainConfig()
    agent_update: AgentUpdateConfig = AgentUpdateConfig()
