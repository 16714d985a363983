"""The search agent over `OpenAICompatibleBackend` against a real local HTTP server (FastAPI + uvicorn)
that plays the LLM: it searches, then answers from the injected information; one reply is unparseable."""

import re

import pytest

from agents.llm import OpenAICompatibleBackend
from agents.retrieval import IndexRetriever
from agents.search_agent import AgentConfig, LLMPolicy, SearchAgent
from agents.search_agent.questions import Question
from embedkit.data import Document
from embedkit.index import Index, build_dense_index
from tests.helpers import free_port, running_server

pytestmark = pytest.mark.slow  # a real uvicorn server


@pytest.fixture(scope="module")
def llm_server():
    """Chat completions: on the first turn, think and search (the text runs past the stop string,
    which a real server would cut); after the information, answer with the first Title it shows; the question
    'confuse me' gets prose without tags."""
    from fastapi import FastAPI, Request

    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        payload = await request.json()
        seen.append(payload)
        messages = payload["messages"]
        last = messages[-1]["content"]
        if "confuse me" in messages[0]["content"]:
            text = "I would rather chat about the weather."
        elif len(messages) == 1:
            text = "<think>I need the facts.</think>\n<search> bread ingredients </search> and more text"
        else:
            title = re.search(r"Title: ([^)]*)\)", last).group(1)
            text = f"<think>Found it.</think>\n<answer> {title} </answer>"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    with running_server(app) as base:
        yield f"{base}/v1", seen


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, minilm_encoder):
    docs = [Document(id="b1", title="Bread", text="Bread is baked from flour, water, salt and yeast."),
            Document(id="v1", title="Volcano", text="A volcano erupts when molten rock rises.")]  # fmt: skip
    out = tmp_path_factory.mktemp("openai") / "index"
    build_dense_index(docs, minilm_encoder, out, quiet=True)
    retriever = IndexRetriever(Index.load(out))
    retriever.retrieve(["warm-up"], k=1)
    return retriever


def test_agent_over_openai_compatible_endpoint(llm_server, retriever):
    url, seen = llm_server
    backend = OpenAICompatibleBackend(url, "policy", timeout=10, max_retries=1, backoff_s=0.01)
    config = AgentConfig(top_k=1, max_turns=3, max_new_tokens=64)
    agent = SearchAgent(LLMPolicy(backend, chat=True), retriever, config)
    good, confused = agent.run([Question("q1", "What is bread made of?", ["Bread"]),
                                Question("q2", "confuse me", ["x"])])  # fmt: skip
    assert [t.action for t in good.turns] == ["search", "answer"]
    assert good.turns[0].output.endswith("<search> bread ingredients </search>")  # cut at the stop string
    assert good.turns[0].query == "bread ingredients" and good.turns[0].passages[0].id == "b1"
    assert good.prediction == "Bread" and good.em == 1.0
    # the second request carried the conversation: instruction, the model's turn, the information block
    # (the requests of both questions are in flight at once, so pick q1's by its question)
    second = next(p for p in seen if len(p["messages"]) == 3 and "bread" in p["messages"][0]["content"])
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][2]["content"].startswith("<information>Doc 1(Title: Bread)")
    assert second["stop"] == ["</search>", "</answer>"] and second["max_tokens"] == 64
    assert confused.status == "max_turns" and [t.action for t in confused.turns] == ["invalid"] * 4  # + answer turn
    assert confused.em == 0.0


def test_llm_endpoint_down_marks_trajectories_and_continues(retriever):
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", "m", timeout=1, max_retries=0)
    agent = SearchAgent(LLMPolicy(backend), retriever, AgentConfig(batch_size=1))
    trajectories = agent.run([Question("a", "q?", ["x"]), Question("b", "q2?", [])])
    assert [t.status for t in trajectories] == ["error", "error"]
    assert "failed after 1 attempts" in trajectories[0].error and trajectories[0].em == 0.0
