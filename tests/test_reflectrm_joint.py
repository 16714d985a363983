"""ReflectRM's joint training end to end through the command line (subprocesses): `rewards build-pairs`, then
`rewards build-prompts --kind reflectrm` whose analyses come from a real OpenAI-compatible server scripted to
mix right and wrong verdicts, then `rewards train` on a tiny random-init judge warmed up on format-only
demonstrations. The analysis-preference prompts are built (reliable = the right analyses), rolled out, scored
and carry non-zero advantages in the loss (`trained_rows/analysis` in metrics.jsonl)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from fastapi import FastAPI, Request

from agents.rewards.parsing import parse_choice
from tests.helpers import running_server
from tests.test_index_integrity import embedkit

pytestmark = pytest.mark.slow  # subprocesses


def _analyst_app():
    """Each distinct prompt is answered A, B, A, B, … in turn: of four analyses of a pair, two are right."""
    app = FastAPI()
    asked: Counter = Counter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        asked[prompt] += 1
        verdict = "A" if asked[prompt] % 2 else "B"
        text = f"Response {verdict} follows the query more closely. <verdict>{verdict}</verdict>"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    return app


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("reflectrm_joint")
    pairs = root / "pairs.jsonl"
    made = embedkit("rewards", "build-pairs", "--sources", "countdown,math", "--per-source", "4", "--out", pairs)
    assert made.returncode == 0, made.stderr
    out = root / "prompts.jsonl"
    with running_server(_analyst_app()) as base:
        built = embedkit("rewards", "build-prompts", "--kind", "reflectrm", "--pairs", pairs, "--llm",
                         f"openai:{base}", "--llm-model", "analyst", "--n-analyses", "4", "--ratio", "1",
                         "--demonstrations", "--out", out)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "(analysis: 8, response: 16)" in built.stdout
    return root, out


def test_analysis_preference_prompts_hold_right_and_wrong_analyses(prompts):
    _, path = prompts
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    analysis = [r for r in records if r["domain"] == "analysis"]
    assert len(analysis) == 8
    for record in analysis:
        verdicts = [parse_choice(t) for t in re.split(r"Analysis \d+:\n", record["prompt"])[1:]]
        assert sorted(verdicts) == ["A", "A", "B", "B"]  # which two are right depends on the order shown
        reliable = record["answer"]["reliable"]
        assert len(reliable) == 2 and record["answer"]["n"] == 4
        assert len({verdicts[i] for i in reliable}) == 1  # the reliable ones agree: the right verdict
        assert re.fullmatch(r"<choice>[1-4]</choice>", record["demonstration"])


def test_joint_training_feeds_the_analysis_task_into_the_loss(prompts, tmp_path):
    from agents.rewards.tiny import build_tiny_judge

    root, path = prompts
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    model = build_tiny_judge(root / "judge", [r["prompt"] for r in records] + ["<choice>1</choice>"],
                             hidden_size=32)  # fmt: skip
    run = tmp_path / "run"
    result = embedkit("rewards", "train", "--config", "configs/rm_reflectrm.yaml", "-q", "--output-dir", run,
                      "--set", f"policy.model={model}", "--set", f"task.params.path={path}",
                      "--set", "rollout.group_size=4", "--set", "trainer.prompts_per_step=12",
                      "--set", "rollout.settings.max_new_tokens=8", "--set", "trainer.lr=1e-3",
                      "--set", "warmup.steps=40", "--set", "warmup.lr=5e-3", "--set", "warmup.batch_size=8",
                      "--steps", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [m["step"] for m in history] == [1, 2]
    # every prompt of the pass was rolled out (24 prompts, 12 per step), the analysis task in both steps' mix
    assert all("reward/analysis" in m and "reward/response" in m for m in history)
    # the warmed-up judge picks analyses at random: some picks are reliable, some not, so analysis groups have
    # non-zero advantages — their responses are in the policy-gradient loss
    assert sum(m["trained_rows/analysis"] for m in history) > 0
    assert max(m["advantage_abs/analysis"] for m in history) > 0
