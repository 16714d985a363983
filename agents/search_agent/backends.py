"""Turn a command-line `--llm` spec into a policy / LLM backend.

    heuristic                        the deterministic policy (no LLM)
    hf:PATH_OR_HUB_ID                a local transformers causal LM (`TransformersBackend`; bf16 on a GPU)
    openai:URL                       any OpenAI-compatible server (vLLM, llama.cpp, SGLang, hosted APIs);
                                     name the served model with `model`, the key with `api_key`
"""

from __future__ import annotations

from typing import Literal

from agents.llm import (
    DEFAULT_CONCURRENCY,
    LLMBackend,
    OpenAICompatibleBackend,
    TransformersBackend,
    load_causal_lm,
)
from agents.search_agent.policy import HeuristicPolicy, LLMPolicy, Policy
from agents.search_agent.trajectory import PolicyRecord
from embedkit.errors import EmbedkitError

PromptMode = Literal["chat", "completion", "search_r1"]


def build_backend(spec: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                  chat: bool = True, concurrency: int = DEFAULT_CONCURRENCY,
                  tokenizer: str | None = None) -> LLMBackend:  # fmt: skip
    """`chat` picks the endpoint (chat messages or plain completions); `tokenizer` (openai) is the served
    model's tokenizer, needed by the search_r1 prompt mode for its chat template."""
    kind, _, target = spec.partition(":")
    if kind == "openai" and target:
        return OpenAICompatibleBackend(target, model or "default", api_key=api_key, timeout=timeout, chat=chat,
                                       concurrency=concurrency, tokenizer=tokenizer)  # fmt: skip
    if kind == "hf" and target:
        lm, hf_tokenizer = load_causal_lm(target)
        return TransformersBackend(lm, hf_tokenizer, chat_template=chat)
    raise EmbedkitError(f"unknown LLM spec '{spec}'; use heuristic, hf:PATH or openai:URL")


def build_policy(spec: str, *, model: str | None = None, api_key: str | None = None, chat: bool | None = True,
                 mode: PromptMode | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 tokenizer: str | None = None) -> Policy:  # fmt: skip
    """`heuristic` or an LLM spec. `mode` (chat, completion, search_r1) wins over the legacy `chat` flag;
    with `mode` given the policy follows it, else `chat` renders turns as chat messages (instruction models)."""
    if spec == "heuristic":
        return HeuristicPolicy()
    if mode is not None:
        backend = build_backend(spec, model=model, api_key=api_key, chat=mode == "chat", concurrency=concurrency,
                                tokenizer=tokenizer)  # fmt: skip
        policy = LLMPolicy(backend, chat=None)
    else:
        backend = build_backend(spec, model=model, api_key=api_key, chat=bool(chat), concurrency=concurrency,
                                tokenizer=tokenizer)  # fmt: skip
        policy = LLMPolicy(backend, chat=chat)
    # Recorded in every trajectory, so that Agentic-R re-runs a step with the same policy.
    policy.record = PolicyRecord(spec=spec, model=model if spec.startswith("openai:") else None,
                                 chat=bool(chat) if mode is None else mode == "chat", mode=mode,
                                 tokenizer=tokenizer)  # fmt: skip
    return policy


def policy_record(policy: Policy) -> PolicyRecord | None:
    """How to rebuild `policy` with `build_policy` (its `record`, set by `build_policy`); None if unknown."""
    record = getattr(policy, "record", None)
    if isinstance(record, PolicyRecord):
        return record
    if isinstance(policy, HeuristicPolicy):
        return PolicyRecord(spec="heuristic")
    return None
