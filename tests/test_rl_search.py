"""The toy search environment over a real embedkit dense index (bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest

from agents.rl.config import RLConfig
from agents.rl.tasks import TASKS, build_search_kv_index, search_kv_documents
from agents.rl.trainer import RLTrainer
from embedkit.errors import DataFormatError

KEYS = ["apple", "river", "stone", "piano"]


@pytest.fixture(scope="module")
def kv_index(tmp_path_factory, minilm_encoder):
    return build_search_kv_index(tmp_path_factory.mktemp("kv") / "index", keys=KEYS, encoder=minilm_encoder)


@pytest.fixture(scope="module")
def kv_task(kv_index):
    return TASKS.get("search_kv")(index=str(kv_index), keys=KEYS, build=False)


def test_search_tool_serves_the_right_document(kv_task):
    task = kv_task
    values = dict(search_kv_documents(KEYS))
    for key in KEYS:
        assert task.tool(key) == f"{key} is {values[key]}"
    assert [e.prompt for e in task.examples] == [f"find {k}:" for k in KEYS]
    assert all("<information>" in e.demonstration for e in task.examples)


@pytest.mark.slow
def test_one_grpo_step_with_retrieval_in_the_loop(kv_index, kv_task, tmp_path):
    config = RLConfig.from_dict({
        "task": {"name": "search_kv", "params": {"index": str(kv_index), "keys": KEYS, "build": False}},
        "warmup": {"steps": 2, "batch_size": 4},
        "rollout": {"group_size": 2, "settings": {"max_new_tokens": 24, "max_turns": 1}},
        "trainer": {"steps": 1, "prompts_per_step": 2, "output_dir": str(tmp_path / "run"), "progress": False},
    })  # fmt: skip
    history = RLTrainer(config, task=kv_task).train()  # the fixture's task: its index is loaded once
    assert history[0]["total_length"] >= history[0]["response_length"]  # tool tokens are not policy tokens
    assert 0.0 <= history[0]["reward_mean"] <= 1.0


def test_jsonl_task_errors_name_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "2+2?", "answer": "4", "domain": "math"}\n{"prompt": "x"}\n')
    with pytest.raises(DataFormatError, match=r"prompts.jsonl, line 2.*'answer'"):
        TASKS.get("jsonl")(path=str(path))
    path.write_text('{"prompt": "2+2?", "answer": "4", "domain": "math"}\n')
    task = TASKS.get("jsonl")(path=str(path))
    assert task.examples[0].domain == "math" and task.domains() == ["math"]
