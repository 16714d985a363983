"""What running the documented commands found, from the command line: each case exits 0 or 2 with one line.

- `embedkit agent run/eval` whose every question failed (LLM endpoint down) exited 0, as if it had results;
- `embedkit encode --ray --ray-address auto` with no Ray cluster ended in a ConnectionError traceback;
- `embedkit index tune` on an index of fewer than 256 documents failed on the IVF-PQ candidate (PQ's 8-bit
  sub-quantizers need 256 training vectors), so it could not tune any small index;
- an OpenAI-compatible endpoint's API key with a non-ASCII character (docs/agents.md showed `OPENAI_API_KEY=…`)
  ended in httpx's UnicodeEncodeError traceback;
- `embedkit boom update --base FOLDER` (and any training) from a folder that does not exist ended in
  transformers' "Repo id must be in the form …" OSError traceback.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import free_port, write_jsonl
from tests.test_index_integrity import assert_user_error, docs, embedkit

pytestmark = pytest.mark.slow  # subprocesses


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """A dense Flat index of 40 documents, built by the CLI with a tiny random BERT."""
    from embedkit.training.tiny import build_tiny_bert

    folder = tmp_path_factory.mktemp("small")
    model = build_tiny_bert(folder / "tiny", seed=2, hidden_size=32, layers=1)
    corpus = write_jsonl(folder / "corpus.jsonl", docs(40))
    result = embedkit("index", "build", "--corpus", corpus, "--model", model, "--device", "cpu", "--out",
                      folder / "index", "--quiet")
    assert result.returncode == 0, result.stderr
    return folder / "index"


def test_agent_run_whose_every_question_failed_exits_2(small_index, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "question": "what is a gene?", "answers": ["dna"]},
                                                   {"id": "q2", "question": "what is a cell?", "answers": ["unit"]}])
    out = tmp_path / "runs" / "agent.jsonl"
    result = embedkit("agent", "run", "--questions", questions, "--index", small_index, "--llm",
                      f"openai:http://127.0.0.1:{free_port()}/v1", "--llm-model", "qwen", "--retrieval-retries", "0",
                      "--out", out, "--quiet", env={"OPENAI_API_KEY": "sk-test"})
    assert_user_error(result, "every question failed (2", str(out), "LLM endpoint")
    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] == ["error", "error"]


def test_agent_run_with_a_non_ascii_api_key_exits_2(small_index, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "question": "what is a gene?"}])
    result = embedkit("agent", "run", "--questions", questions, "--index", small_index, "--llm",
                      f"openai:http://127.0.0.1:{free_port()}/v1", "--out", tmp_path / "out.jsonl", "--quiet",
                      env={"OPENAI_API_KEY": "sk-…"})
    assert_user_error(result, "API key", "not ASCII", "$OPENAI_API_KEY")


def test_boom_update_from_a_missing_base_exits_2(tmp_path):
    pairs = [{"query": "what is a gene?", "pos": ["a gene is dna"], "neg": ["a river flows"]}]
    new, old = write_jsonl(tmp_path / "new.jsonl", pairs), write_jsonl(tmp_path / "old.jsonl", pairs)
    result = embedkit("boom", "update", "--base", tmp_path / "runs" / "boom" / "model", "--new-data", new,
                      "--history", old, "--output-dir", tmp_path / "runs" / "boom-v2")
    assert_user_error(result, f"cannot load model '{tmp_path / 'runs' / 'boom' / 'model'}'", "Give a local path")
    assert not (tmp_path / "runs" / "boom-v2").exists()


def test_encode_with_ray_and_no_cluster_exits_2(tmp_path):
    pytest.importorskip("ray")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(4))
    # an empty Ray temp dir: no session file left by another run points `auto` at a stale cluster
    result = embedkit("encode", "--corpus", corpus, "--out", tmp_path / "shards", "--ray", "--ray-address", "auto",
                      env={"RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": ""})
    assert_user_error(result, "cannot connect to Ray at auto", "ray start --head")


def test_tune_on_a_small_index_leaves_out_ivf_pq(small_index, tmp_path):
    result = embedkit("index", "tune", small_index, "--num-queries", "20", "--output", tmp_path / "tune.md")
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "tune.md").read_text()
    assert "IVF-Flat" in table and "HNSW32" in table and "IVF-PQ" not in table
    assert_user_error(embedkit("index", "tune", small_index, "--kinds", "Flat,IVF-PQ"),
                      "--kinds IVF-PQ: not a kind tune can build for 40 documents")
