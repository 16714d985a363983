"""A verl tool that searches an `embedkit serve` index: Search-R1's `/retrieve` protocol inside verl's agent loop.

    # configs/verl/search_tool.yaml wires it; verl loads it with its own loader:
    from verl.tools.tool_registry import initialize_tools_from_config
    [tool] = initialize_tools_from_config("configs/verl/search_tool.yaml")
    # training: actor_rollout_ref.rollout.multi_turn.tool_config_path=configs/verl/search_tool.yaml

Each call POSTs `{"queries": [...], "topk": k, "return_scores": true}` to `<url>/retrieve` (the request
Search-R1's generation loop sends) through embedkit's HTTP client (`agents.http_retriever`: bearer key,
per-attempt timeout, retries with exponential backoff on transport errors, timeouts, 429 and 5xx, no retry on
other 4xx). Passages are rendered as Search-R1 renders them (`Doc i(Title: t) text`, one per line) and, with
`result_format: information`, wrapped in Search-R1's `\\n\\n<information>…</information>\\n\\n` block, the same
text embedkit's own agents and RL trainer inject. A failed search never raises into the rollout: the model
reads `(search failed: …)` inside the block, as `SearchAgent` shows it, and the call's metrics say so.

The Agentic-R retriever input `"{question} [SEP] {query}"` is `query_template`; the question comes from the
data row's `extra_info.tools_kwargs.search.create_kwargs.question` (written by `agents.rl.verl.data`), which
verl hands to `create()`.

Two agent loops run it: verl's stock `ToolAgentLoop` (`agent_name: tool_agent`, `multi_turn.format: hermes`),
where the model calls `<tool_call>{"name": "search", "arguments": {"query": …}}</tool_call>` and reads the
passages in a tool turn, and `agents.rl.verl.search_r1_loop` (`search_r1_agent`), which keeps Search-R1's own
`<search>` / `<information>` token stream (that module says why the stock loop cannot).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Literal
from uuid import uuid4

from pydantic import Field, field_validator
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from agents.http_retriever import HttpRetriever
from agents.rl.verl.data import TOOL_NAME
from agents.search_agent.format import PASSAGE_TEMPLATE, information_block, render_passages
from embedkit.config import YamlConfig, validate_config
from embedkit.errors import DataFormatError
from embedkit.server.config import API_KEY_ENV

log = logging.getLogger(__name__)

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Search a Wikipedia-style knowledge base; returns the top passages for the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to search for"}},
            "required": ["query"],
        },
    },
}


class SearchToolSettings(YamlConfig):
    """The `config:` block of the tool's entry in a verl tool-config YAML."""

    type: Literal["native"] = Field("native", description="verl's tool type; the only one verl 0.9 loads")
    url: str = Field("http://127.0.0.1:8000", description="embedkit serve root (a URL ending in /retrieve works)")
    topk: int = Field(3, ge=1, le=100, description="passages per query (Search-R1 trains with 3)")
    timeout_s: float = Field(30.0, gt=0, description="one HTTP attempt longer than this fails")
    retries: int = Field(2, ge=0, le=10, description="extra attempts after a transport error, timeout, 429 or 5xx")
    backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff_s * 2**i")
    api_key_env: str | None = Field(
        API_KEY_ENV, description="environment variable holding the server's bearer key (unset or empty: no key)")
    query_template: str = Field(
        "{query}", description="what the retriever receives; Agentic-R: '{question} [SEP] {query}'")
    passage_template: str = Field(PASSAGE_TEMPLATE, description="one passage, fields {i} {title} {text} {id}")
    result_format: Literal["information", "passages"] = Field(
        "information", description="information: Search-R1's <information> block; passages: the bare lines")
    max_queries: int = Field(4, ge=1, description="queries accepted in one call (`query_list`)")

    @field_validator("query_template")
    @classmethod
    def _query_template(cls, value: str) -> str:
        if "{query}" not in value:
            raise ValueError("query_template must contain {query}")
        try:
            value.format(question="q", query="q")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"query_template may use only {{question}} and {{query}}: {error}") from None
        return value

    @field_validator("passage_template")
    @classmethod
    def _passage_template(cls, value: str) -> str:
        try:
            value.format(i=1, title="t", text="x", id="d")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"passage_template may use only {{i}} {{title}} {{text}} {{id}}: {error}") from None
        return value

    @property
    def needs_question(self) -> bool:
        return "{question}" in self.query_template

    def api_key(self) -> str | None:
        """The bearer key from `api_key_env`; a key httpx could not send (not ASCII) is refused here."""
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if not key:
            return None
        if not key.isascii():
            raise DataFormatError(f"${self.api_key_env} holds characters that are not ASCII; an HTTP header "
                                  "cannot carry them (was it pasted with a typographic character?)",
                                  field="api_key_env")  # fmt: skip
        return key


class EmbedkitSearchTool(BaseTool):
    """verl `BaseTool`: `{"query": "…"}` (or `{"query_list": [...]}`) in, rendered passages out."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None) -> None:
        self.settings: SearchToolSettings = validate_config(SearchToolSettings, config or {})
        self._api_key = self.settings.api_key()
        self._retriever: HttpRetriever | None = None
        self._questions: dict[str, str | None] = {}
        super().__init__(config, tool_schema or OpenAIFunctionToolSchema.model_validate(TOOL_SCHEMA))

    def retriever(self) -> HttpRetriever:
        # Built on first use, inside the worker that runs the rollouts: an HTTP client does not pickle.
        if self._retriever is None:
            s = self.settings
            self._retriever = HttpRetriever(s.url, api_key=self._api_key, timeout=s.timeout_s, retries=s.retries,
                                            backoff=s.backoff_s)  # fmt: skip
        return self._retriever

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        """verl passes the row's `tools_kwargs.search.create_kwargs` as `create_kwargs`; its `question` is kept."""
        instance_id = instance_id or str(uuid4())
        create_kwargs = kwargs.get("create_kwargs") or {}
        question = create_kwargs.get("question") if isinstance(create_kwargs, dict) else None
        self._questions[instance_id] = str(question) if question is not None else None
        return instance_id, ToolResponse()

    async def execute(self, instance_id: str, parameters: dict[str, Any],
                      **kwargs: Any) -> tuple[ToolResponse, float, dict]:  # fmt: skip
        """Search and render; every failure becomes the tool's text (the rollout goes on), with `failed: 1`."""
        try:
            queries = self.retriever_inputs(parameters, self._questions.get(instance_id))
        except DataFormatError as error:
            return self._answer(error=str(error), queries=0)
        try:
            results = await asyncio.to_thread(self.retriever().retrieve, queries, self.settings.topk)
        except Exception as error:  # the server's fault or the network's: tell the model, keep the rollout alive
            log.warning("search tool: %s", error)
            return self._answer(error=f"{type(error).__name__}: {str(error)[:300]}", queries=len(queries))
        rendered = "\n".join(render_passages(passages[: self.settings.topk], self.settings.passage_template)
                             for passages in results)  # fmt: skip
        return self._answer(text=rendered, queries=len(queries), passages=sum(len(p) for p in results))

    def retriever_inputs(self, parameters: dict[str, Any], question: str | None) -> list[str]:
        """The texts sent to `/retrieve`: each model query through `query_template`."""
        raw = parameters.get("query", parameters.get("query_list")) if isinstance(parameters, dict) else None
        queries = [raw] if isinstance(raw, str) else raw
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            raise DataFormatError('the search tool needs {"query": "<text>"} (or "query_list": [texts]), got '
                                  f"{str(parameters)[:200]}")  # fmt: skip
        queries = [" ".join(q.split()) for q in queries]
        if not all(queries):
            raise DataFormatError("the search query is empty")
        if len(queries) > self.settings.max_queries:
            raise DataFormatError(f"{len(queries)} queries in one call; at most {self.settings.max_queries}")
        if self.settings.needs_question and not question:
            raise DataFormatError("query_template uses {question} but this row has no question: write "
                                  "extra_info.tools_kwargs.search.create_kwargs.question (agents.rl.verl.data does)")
        return [self.settings.query_template.format(question=question or "", query=q) for q in queries]

    def _answer(self, *, text: str = "", error: str | None = None, queries: int,
                passages: int = 0) -> tuple[ToolResponse, float, dict]:  # fmt: skip
        body = f"(search failed: {error})" if error is not None else text
        if self.settings.result_format == "information":
            body = information_block(body)
        metrics = {"queries": queries, "passages": passages, "failed": int(error is not None)}
        return ToolResponse(text=body), 0.0, metrics

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._questions.pop(instance_id, None)
