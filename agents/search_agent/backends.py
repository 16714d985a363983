"""Turn a command-line `--llm` spec into a policy / LLM backend.

    heuristic                        the deterministic policy (no LLM)
    hf:PATH_OR_HUB_ID                a local transformers causal LM (`TransformersBackend`)
    openai:URL                       any OpenAI-compatible server (vLLM, llama.cpp, SGLang, hosted APIs);
                                     name the served model with `model`, the key with `api_key`
"""

from __future__ import annotations

from agents.llm import LLMBackend, OpenAICompatibleBackend, TransformersBackend
from agents.search_agent.policy import HeuristicPolicy, LLMPolicy, Policy
from embedkit.errors import EmbedkitError, ModelUnavailableError


def build_backend(spec: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                  chat: bool = True) -> LLMBackend:  # fmt: skip
    kind, _, target = spec.partition(":")
    if kind == "openai" and target:
        return OpenAICompatibleBackend(target, model or "default", api_key=api_key, timeout=timeout, chat=chat)
    if kind == "hf" and target:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(target)
            lm = AutoModelForCausalLM.from_pretrained(target)
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(f"cannot load causal LM '{target}': {str(error).splitlines()[0]}") from None
        lm.eval()
        return TransformersBackend(lm, tokenizer, chat_template=chat)
    raise EmbedkitError(f"unknown LLM spec '{spec}'; use heuristic, hf:PATH or openai:URL")


def build_policy(spec: str, *, model: str | None = None, api_key: str | None = None, chat: bool = True) -> Policy:
    """`heuristic` or an LLM spec; `chat` renders turns as chat messages (instruction models)."""
    if spec == "heuristic":
        return HeuristicPolicy()
    return LLMPolicy(build_backend(spec, model=model, api_key=api_key, chat=chat), chat=chat)
