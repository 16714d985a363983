"""`embedkit agent run --retriever-url`: the agent over the real `embedkit serve` app (Search-R1's POST
/retrieve with bearer auth) on a local port, and over a server that is down (failures recorded, run completes)."""

import json

import pytest

from agents.search_agent import read_trajectories
from embedkit.cli import main
from embedkit.data import Document
from embedkit.index import build_dense_index
from tests.helpers import MULTIHOP_DOCS, free_port, running_server

DOCS = [doc for doc in MULTIHOP_DOCS if doc[0] in {"k1", "s1", "b1"}]  # the two hops and one distractor
QUESTION = {"id": "q1", "question": "What government position was held by the actress who starred in Kiss and Tell?",
            "answers": ["Chief of Protocol"]}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_encoder):
    pytest.importorskip("embedkit.server")

    from embedkit.server.app import create_app
    from embedkit.server.config import ServerConfig

    out = tmp_path_factory.mktemp("served") / "index"
    build_dense_index([Document(id=i, title=t, text=x) for i, t, x in DOCS], minilm_encoder, out, quiet=True)
    port = free_port()
    app = create_app(ServerConfig(index=str(out), api_key="secret", port=port))
    with running_server(app, port) as base:
        yield f"{base}/retrieve"


def test_agent_over_embedkit_serve(served, tmp_path, monkeypatch, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(QUESTION) + "\n", encoding="utf-8")
    monkeypatch.setenv("AGENT_TEST_KEY", "secret")
    out = tmp_path / "t.jsonl"
    assert main(["agent", "run", "--questions", str(questions), "--retriever-url", served, "--retriever-key-env",
                 "AGENT_TEST_KEY", "--top-k", "1", "--retrieval-timeout", "60", "--out", str(out), "-q"]) == 0  # fmt: skip
    trajectory = read_trajectories(out)[0]
    assert [p.id for s in trajectory.searches for p in s.passages] == ["k1", "s1"]
    assert trajectory.searches[0].passages[0].title == "Kiss and Tell (1945 film)"  # from Search-R1's contents
    assert trajectory.em == 1.0 and "EM 1.0000" in capsys.readouterr().out

    monkeypatch.setenv("AGENT_TEST_KEY", "wrong")  # 401: recorded as a failure, the run still completes
    assert main(["agent", "run", "--questions", str(questions), "--retriever-url", served, "--retriever-key-env",
                 "AGENT_TEST_KEY", "--retrieval-retries", "0", "--out", str(out), "-q"]) == 0  # fmt: skip
    failed = read_trajectories(out)[0]
    assert "401" in failed.searches[0].error and failed.status == "answered"


def test_agent_with_retrieval_server_down(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(QUESTION) + "\n", encoding="utf-8")
    out = tmp_path / "t.jsonl"
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    assert main(["agent", "run", "--questions", str(questions), "--retriever-url", url, "--retrieval-retries", "1",
                 "--retrieval-timeout", "5", "--out", str(out), "-q"]) == 0  # fmt: skip
    trajectory = read_trajectories(out)[0]
    assert trajectory.searches[0].retrieval_attempts == 2 and trajectory.searches[0].error
    assert "retrieval failures 1" in capsys.readouterr().out
