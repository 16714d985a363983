"""Agentic-R's labelling defaults are upstream's: the local utility is the LLM judge unless the embedding-similarity
stand-in is chosen explicitly, a run without a judge stops before any work with a message naming the options, and
every output of a stand-in run says which scorers produced it. Through `python -m embedkit` in a subprocess."""

from __future__ import annotations

import json

import pytest

from agents.retrieval import IndexRetriever
from agents.search_agent import AgentConfig, HeuristicPolicy, SearchAgent, write_trajectories
from agents.search_agent.questions import Question
from embedkit.data import Document
from embedkit.index import Index, build_dense_index
from tests.helpers import MULTIHOP_DOCS
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # subprocesses

QUESTION = Question("q1", "What government position was held by the actress who starred in the film Kiss and Tell?",
                    ["Chief of Protocol"])  # fmt: skip


def test_label_defaults_to_the_llm_judge_and_stops_before_reading_anything(tmp_path):
    out = tmp_path / "pairs.jsonl"
    # Neither input exists: the missing judge is reported first, before trajectories or index are read.
    result = embedkit("agentic-r", "label", "--trajectories", tmp_path / "none.jsonl", "--index", tmp_path / "none",
                      "--out", out)  # fmt: skip
    assert_user_error(result, "'llm_judge' (the default, as upstream)", "--judge", "--local embedder")
    assert not out.exists()


def test_iterate_without_a_judge_stops_before_the_agent_runs(tmp_path):
    config = tmp_path / "ar.yaml"
    run = tmp_path / "run"
    config.write_text(f"questions: {tmp_path / 'none.jsonl'}\ncorpus: {tmp_path / 'none'}\noutput_dir: {run}\n"
                      "policy: heuristic\n", encoding="utf-8")  # fmt: skip
    result = embedkit("agentic-r", "iterate", "--config", config)
    assert_user_error(result, "--judge", "label.local: embedder")
    assert not run.exists()  # nothing was started


def test_the_stand_in_is_explicit_and_recorded_in_every_pair(tmp_path, minilm_encoder):
    index_path = tmp_path / "index"
    build_dense_index([Document(id=i, title=t, text=x) for i, t, x in MULTIHOP_DOCS], minilm_encoder, index_path,
                      quiet=True)  # fmt: skip
    agent = SearchAgent(HeuristicPolicy(), IndexRetriever(Index.load(index_path)), AgentConfig(top_k=1))
    trajectories = write_trajectories(tmp_path / "t.jsonl", agent.run([QUESTION]))
    out = tmp_path / "pairs.jsonl"
    result = embedkit("agentic-r", "label", "--trajectories", trajectories, "--index", index_path, "--out", out,
                      "--local", "embedder", "--global", "containment", "--min-local", "0", "--set", "negatives=4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.splitlines()[0])
    assert stats["local_utility"] == "embedder" and stats["global_utility"] == "containment" and stats["kept"] >= 1
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records and all(r["local_utility"] == "embedder" and r["global_utility"] == "containment" for r in records)
