"""LLM backends: a real local transformers model and a real HTTP server speaking the OpenAI API."""



import pytest

from agents.llm import LLMBackend, OpenAICompatibleBackend, TransformersBackend, truncate_at_stop
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from embedkit.errors import EmbedkitError
from tests.helpers import free_port, running_server


@pytest.fixture(scope="module")
def server():
    """A tiny OpenAI-compatible chat server: echoes the last user message reversed; fails the first call."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    state = {"calls": 0, "payloads": []}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        payload = await request.json()
        state["calls"] += 1
        state["payloads"].append(payload)
        if state["calls"] == 1:
            return JSONResponse({"error": "warming up"}, status_code=503)
        if payload["model"] != "judge":
            return JSONResponse({"error": "no such model"}, status_code=404)
        text = payload["messages"][-1]["content"][::-1] + " STOP tail"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    with running_server(app) as base:
        yield f"{base}", state


@pytest.mark.slow
def test_openai_backend_retries_and_truncates(server):
    url, state = server
    backend = OpenAICompatibleBackend(url + "/v1", "judge", api_key="k", timeout=5, max_retries=2, backoff_s=0.01)
    assert isinstance(backend, LLMBackend)
    out = backend.generate(["abc", [{"role": "user", "content": "xyz"}]], max_new_tokens=4, temperature=0.0,
                           stop=[" STOP"])  # fmt: skip
    assert out == ["cba", "zyx"]
    assert state["payloads"][-1]["max_tokens"] == 4 and state["payloads"][-1]["stop"] == [" STOP"]


@pytest.mark.slow
def test_openai_backend_client_error_is_user_error(server):
    url, _ = server
    backend = OpenAICompatibleBackend(url, "missing", timeout=5, max_retries=0)
    with pytest.raises(EmbedkitError, match="404"):
        backend.generate(["abc"], max_new_tokens=4, temperature=0.0, stop=None)


def test_openai_backend_unreachable():
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", "m", timeout=1, max_retries=1,
                                      backoff_s=0.01)  # fmt: skip
    with pytest.raises(EmbedkitError, match="failed after 2 attempts"):
        backend.generate(["abc"], max_new_tokens=4, temperature=0.0, stop=None)


def test_transformers_backend_greedy_is_deterministic_and_batched():
    tok = build_char_tokenizer()
    model = build_tiny_causal_lm(tok)
    backend = TransformersBackend(model, tok, batch_size=2)
    prompts = ["abc", "hello there", [{"role": "user", "content": "hi"}]]
    a = backend.generate(prompts, max_new_tokens=6, temperature=0.0, stop=None)
    b = backend.generate(prompts[::-1], max_new_tokens=6, temperature=0.0, stop=None)
    assert len(a) == 3 and a == b[::-1]  # left padding: batch composition doesn't change greedy outputs
    assert all(len(text) <= 6 for text in a)


def test_truncate_at_stop():
    assert truncate_at_stop("a</search>b</answer>", ["</answer>", "</search>"]) == "a"
    assert truncate_at_stop("abc", None) == "abc"
