"""Typed settings of a search agent: prompt, stop strings, turn limit, top-k, retrieval robustness.

    config = AgentConfig.from_yaml("configs/agent.yaml")
    config = AgentConfig(max_turns=5, top_k=3, query_template="{question} [SEP] {query}")
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedkit.errors import DataFormatError, EmbedkitError

# Our own wording of the Search-R1 instruction; the tags and their meaning are the protocol, not the text.
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


class AgentConfig(BaseModel):
    """Everything that shapes an agent run except the policy and the retriever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_template: str = Field(DEFAULT_PROMPT, description="the first user message; must contain {question}")
    stop: list[str] = Field(default_factory=lambda: ["</search>", "</answer>"],
                            description="generation stops after any of these; the stop string is kept")
    max_turns: int = Field(4, ge=1, le=32, description="model turns per question (searches + the answer)")
    top_k: int = Field(3, ge=1, le=100, description="passages injected per search")
    max_new_tokens: int = Field(512, gt=0, description="token budget of one model turn")
    temperature: float = Field(0.0, ge=0.0, description="0 decodes greedily")
    query_template: str = Field(
        "{query}",
        description="what the retriever receives; Agentic-R retrievers are trained on '{question} [SEP] {query}'",
    )
    passage_template: str = Field("Doc {i}(Title: {title}) {text}", description="one passage in <information>")
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
    def from_yaml(cls, path: str | Path, **overrides: object) -> AgentConfig:
        """Load a config file; `overrides` (e.g. from command-line flags) win over the file."""
        from pydantic import ValidationError

        try:
            return cls.model_validate({**load_yaml_mapping(path, section="agent"), **overrides})
        except ValidationError as error:
            first = error.errors()[0]
            raise DataFormatError(first["msg"], path=path, field=".".join(map(str, first["loc"])) or None) from None


def load_yaml_mapping(path: str | Path, *, section: str | None = None) -> dict:
    """A YAML file's mapping (or its `section` when the file has one), with a clear error for bad files."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EmbedkitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DataFormatError(f"not valid YAML: {error}", path=path) from None
    if not isinstance(data, dict):
        raise DataFormatError("expected a mapping at the top level", path=path)
    if section is not None:
        if isinstance(data.get(section), dict):
            data = data[section]
        elif any(isinstance(v, dict) for v in data.values()):
            data = {}  # a file of several sections without this one: all defaults
    return dict(data)
