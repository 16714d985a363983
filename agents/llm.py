"""LLM backends shared by judges, reward models and search agents.

Anything with a `generate(prompts, *, max_new_tokens, temperature, stop)` method is an `LLMBackend`.
Two implementations ship here:

    backend = TransformersBackend(model, tokenizer)                    # a local HF causal LM
    backend = OpenAICompatibleBackend("http://127.0.0.1:8000", "qwen")  # vLLM, SGLang, TGI, OpenAI …
    texts = backend.generate(["Is 2+2=4? Answer yes or no."], max_new_tokens=8, temperature=0.0, stop=None)

A prompt is either a plain string or a chat (a list of `{"role": ..., "content": ...}` messages).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from embedkit.errors import EmbedkitError

Message = dict[str, str]
DEFAULT_CONCURRENCY = 8  # requests in flight per OpenAI-compatible backend
Prompt = str | list[Message]


@runtime_checkable
class LLMBackend(Protocol):
    """Text in, text out: one completion per prompt, in order."""

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float,
        stop: list[str] | None,
    ) -> list[str]: ...


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """Cut `text` before the first occurrence of any stop string (the stop string is not kept)."""
    if not stop:
        return text
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def chat_prefix(tokenizer: Any, messages: list[Message]) -> str:
    """The chat template applied to `messages` with the generation prompt, as text, ready to be continued.

    A tokenizer without a chat template gives the first message's content, as verl's RL dataset does.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return messages[0]["content"]


def load_causal_lm(path: str, *, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a transformers causal LM, in eval mode: bf16 on a CUDA GPU when there is one
    (the dtype RL checkpoints are trained and served in), fp32 on CPU (bf16 matmuls are slow or missing there)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from embedkit.encoding.models import resolve_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    path = resolve_model(path)  # recovers a policy folder (an RL checkpoint's) left mid-swap by a killed writer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        from embedkit.errors import ModelUnavailableError

        raise ModelUnavailableError(f"cannot load causal LM '{path}': {str(error).splitlines()[0]}") from None
    model = model.to(device)  # type: ignore[arg-type]  # transformers' stubs type `to` oddly
    return model.eval(), tokenizer


class TransformersBackend:
    """A local `transformers` causal LM; chats go through the tokenizer's chat template.

    `temperature == 0` decodes greedily. Prompts are left-padded and generated in batches of `batch_size`.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, chat_template: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chat_template = chat_template

    def _render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        # Tokenizers without a chat template (tiny test models, base LMs): a plain transcript.
        lines = [f"{m['role']}: {m['content']}" for m in prompt]
        return "\n".join(lines) + "\nassistant:"

    def chat_prefix(self, messages: list[Message]) -> str:
        """The prompt text of Search-R1's `search_r1` mode (see `chat_prefix`)."""
        return chat_prefix(self.tokenizer, messages)

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> list[str]:
        import torch

        texts = [self._render(p) for p in prompts]
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [tok.encode(t, add_special_tokens=False) for t in texts[start : start + self.batch_size]]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):  # left padding so every prompt ends at the same column
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=tok)
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
                )
            for row in generated[:, width:]:
                outputs.append(truncate_at_stop(tok.decode(row.tolist(), skip_special_tokens=True), stop))
        return outputs


class OpenAICompatibleBackend:
    """POST /v1/chat/completions (or /v1/completions for plain strings when `chat=False`) on any server.

    Retries connection errors, 429 and 5xx with exponential back-off; other HTTP errors raise
    `EmbedkitError` with the server's message. Up to `concurrency` requests are in flight at once (a thread
    pool over one `httpx.Client`), so a server that batches (vLLM, SGLang) works on a whole agent batch in
    parallel; results come back in prompt order. `tokenizer` (a path, hub id or tokenizer object) is needed
    only for `chat_prefix` (the `search_r1` prompt mode applies the served model's chat template here).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        *,
        chat: bool = True,
        backoff_s: float = 0.5,
        concurrency: int = DEFAULT_CONCURRENCY,
        tokenizer: Any = None,
    ) -> None:
        import httpx

        if concurrency < 1:
            raise EmbedkitError(f"concurrency must be at least 1, not {concurrency}")
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model = model
        self.max_retries = max_retries
        self.chat = chat
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self._tokenizer = tokenizer
        if api_key and not api_key.isascii():  # httpx would raise UnicodeEncodeError on the header
            raise EmbedkitError("the API key has a character an HTTP header cannot carry (it is not ASCII); "
                                "check the variable it is read from, e.g. $OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max(concurrency, 10), max_keepalive_connections=max(concurrency, 10))
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, limits=limits)

    def close(self) -> None:
        self._client.close()

    def chat_prefix(self, messages: list[Message]) -> str:
        """The served model's chat template applied to `messages` (needs `tokenizer`)."""
        if self._tokenizer is None:
            raise EmbedkitError("the search_r1 prompt mode over an OpenAI-compatible endpoint needs the served model's "
                                "tokenizer for its chat template (--llm-tokenizer PATH_OR_ID)")  # fmt: skip
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer)
            except (OSError, ValueError) as error:
                raise EmbedkitError(f"cannot load tokenizer '{self._tokenizer}': {str(error).splitlines()[0]}") from None
        return chat_prefix(self._tokenizer, messages)

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(path, json=payload)
            except httpx.TransportError as error:  # connection refused, timeouts: worth retrying
                last = error
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = EmbedkitError(f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}")
                elif response.status_code >= 400:
                    raise EmbedkitError(f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}")
                else:
                    return response.json()
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise EmbedkitError(f"LLM endpoint {self.base_url}{path} failed after {self.max_retries + 1} attempts: {last}")

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> list[str]:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature}
        if stop:
            payload["stop"] = list(stop)

        def one(prompt: Prompt) -> str:
            if self.chat or not isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                data = self._post("/v1/chat/completions", {**payload, "messages": messages})
                try:
                    text = data["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError) as error:
                    raise EmbedkitError(f"unexpected chat completion response: {str(data)[:300]}") from error
            else:
                data = self._post("/v1/completions", {**payload, "prompt": prompt})
                try:
                    text = data["choices"][0]["text"] or ""
                except (KeyError, IndexError, TypeError) as error:
                    raise EmbedkitError(f"unexpected completion response: {str(data)[:300]}") from error
            # Servers may ignore `stop`; cut client-side so both backends behave the same.
            return truncate_at_stop(text, stop)

        if self.concurrency == 1 or len(prompts) <= 1:
            return [one(p) for p in prompts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)), thread_name_prefix="llm") as pool:
            return list(pool.map(one, prompts))  # in prompt order; the first failure is raised


class BackendConfig(BaseModel):
    """Which LLM a judge uses, as YAML: `{kind: openai, base_url: http://…, model: qwen}` or
    `{kind: transformers, model: path/or/hub-id}`. The API key is read from the environment variable
    named by `api_key_env` so it never lands in a config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "transformers"] = "openai"
    model: str
    base_url: str = "http://127.0.0.1:8000"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 3
    batch_size: int = 8
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight (openai)


def build_backend(config: BackendConfig | dict[str, Any]) -> LLMBackend:
    """An `LLMBackend` from a `BackendConfig` (or its dict form)."""
    import os

    if not isinstance(config, BackendConfig):
        config = BackendConfig.model_validate(config)
    if config.kind == "openai":
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAICompatibleBackend(config.base_url, config.model, api_key=key, timeout=config.timeout,
                                       max_retries=config.max_retries, concurrency=config.concurrency)  # fmt: skip
    model, tokenizer = load_causal_lm(config.model)  # kind == "transformers"
    return TransformersBackend(model, tokenizer, batch_size=config.batch_size)
