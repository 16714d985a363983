"""Training the generative reward models with the RL module: ConsistRM's pairwise memory (and its resume),
ReflectRM's joint data and dispatching reward, AC-GenRM's batched both-order judging, and two RL steps of
each configs/rm_*.yaml on a tiny random-init Qwen2 judge with a locally trained tokenizer."""

from __future__ import annotations

import json
import re

import pytest
import torch

from agents.rewards.acgenrm import ACGenRM, acpo_group_rewards
from agents.rewards.consistrm import ConsistencyMemory, ConsistRMReward
from agents.rewards.pair_data import countdown_pairs, math_pairs
from agents.rewards.pairs import PreferencePair
from agents.rewards.reflectrm import ReflectRM, label_analyses, reflectrm_records
from agents.rewards.training import PassTask, consistrm_records, judge_prompts, write_records_jsonl
from agents.rl.reward_registry import RewardBatch, build_reward
from agents.rl.tasks import Example

torch.set_num_threads(2)


class Scripted:
    """A deterministic LLM backend: answers each prompt through `reply(prompt)`, counting calls."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, prompts, *, max_new_tokens, temperature, stop):
        self.calls.append(list(prompts))
        return [self.reply(p) for p in prompts]


# ---- ConsistRM ---------------------------------------------------------------------------------------------
def test_memory_pools_votes_within_a_round_and_keeps_history():
    memory = ConsistencyMemory()
    assert memory.update("x", [1, 1, -1], round=0) == 1  # 1/3
    assert memory.update("x", [-1, -1, -1], round=0) == -1  # round 0 pools: (2 − 4) / 6 < 0
    assert memory.update("x", [-1], round=1) == -1  # round 0 closes with ŷ = −1; −1 + −1
    assert memory.update("x", [1, 1], round=1) == -1  # round 1 pools (−1, 1, 1): 1/3 + (−1) < 0
    assert memory.items["x"].labels == [-1]


def test_pairwise_votes_of_both_orders_count_for_one_item():
    reward = ConsistRMReward(None)
    batch = RewardBatch(
        prompts=["ab", "ab", "ba", "ba"],
        responses=["<verdict>A</verdict>", "<verdict>B</verdict>", "<verdict>B</verdict>", "garbage"],
        ground_truths=[{"item": "p", "swapped": False, "round": 0}] * 2 + [{"item": "p", "swapped": True, "round": 0}] * 2,
        group_ids=[0, 0, 1, 1],
    )  # fmt: skip
    # order ab: A (+1), B (−1); order ba: B means the pair's first response (+1) wins; both groups pool
    # (+1, −1, +1) → ŷ = +1 for both; the garbage judgement pays the format penalty
    assert reward(batch) == [1.0, 0.0, 1.0, -5.0]
    assert reward.last_labels == {"p": 1}
    state = json.loads(json.dumps(reward.state_dict()))
    restored = ConsistRMReward(None)
    restored.load_state_dict(state)
    assert restored.memory.items["p"].votes == [1, -1, 1] and restored.last_labels == {"p": 1}


def test_pass_task_serves_both_orders_of_an_item_together():
    import random

    task = PassTask([Example(f"p{i}{o}", {"item": i, "swapped": o}) for i in range(4) for o in (False, True)], seed=1)
    items = [e.ground_truth["item"] for e in task.sample(8, random.Random(0))]
    assert all(items[k] == items[k + 1] for k in range(0, 8, 2)) and sorted(set(items)) == [0, 1, 2, 3]


def test_pass_task_visits_each_prompt_once_per_round():
    task = PassTask([Example(f"p{i}", {"item": i}) for i in range(5)], seed=3)
    import random

    drawn = [task.sample(2, random.Random(0)) for _ in range(5)]
    flat = [e for batch in drawn for e in batch]
    assert sorted(e.ground_truth["item"] for e in flat[:5]) == list(range(5))  # pass 0: all five, once
    assert sorted(e.ground_truth["item"] for e in flat[5:]) == list(range(5))
    assert {e.ground_truth["round"] for e in flat[:5]} == {0} and {e.ground_truth["round"] for e in flat[5:]} == {1}
    assert task.state_dict() == {"pass": 2, "cursor": 0}


# ---- ReflectRM ---------------------------------------------------------------------------------------------
def test_reflectrm_builder_labels_hand_made_analyses():
    analyses = ["A is right because ... <verdict>A</verdict>", "B looks better <verdict>B</verdict>",
                "no verdict here", "<verdict>a</verdict>"]  # fmt: skip
    assert label_analyses(analyses, "A") == [0, 3] and label_analyses(analyses, "b") == [1]
    pairs = [PreferencePair(f"p{i}", f"q{i}", f"good{i}", f"bad{i}") for i in range(8)]

    def reply(prompt):  # two right and two wrong analyses per pair, whatever the order shown
        a = re.search(r"Response A: (\S+)", prompt).group(1)
        right, wrong = ("A", "B") if a.startswith("good") else ("B", "A")
        reply.k += 1
        return f"analysis {reply.k} <verdict>{right if reply.k % 2 else wrong}</verdict>"

    reply.k = 0
    backend = Scripted(reply)
    records = reflectrm_records(pairs, backend, n_analyses=4, ratio=4.0, seed=0)
    response = [r for r in records if r["answer"]["task"] == "response"]
    analysis = [r for r in records if r["answer"]["task"] == "analysis"]
    assert len(response) == 16 and len(analysis) == 4  # 16 / 4: the default 4:1 mix
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 32  # every analysis in one call
    for r in response:
        a = re.search(r"Response A: (\S+)", r["prompt"]).group(1)
        assert r["answer"]["preferred"] == ("A" if a.startswith("good") else "B")
    for r in analysis:
        listed = re.findall(r"Analysis \d+:\n(.*?<verdict>(\w)</verdict>)", r["prompt"])
        a = re.search(r"Response A: (\S+)", r["prompt"]).group(1)
        right = "A" if a.startswith("good") else "B"
        assert r["answer"]["reliable"] == [i for i, (_, v) in enumerate(listed) if v == right]
        assert r["answer"]["n"] == 4 and len(r["answer"]["reliable"]) == 2
    reward = build_reward("reflectrm")
    batch = RewardBatch(prompts=["x", "y", "z"], responses=["<verdict>B</verdict>", "<choice>2</choice>", "??"],
                        ground_truths=[{"task": "response", "preferred": "B"}, {"task": "analysis", "reliable": [0], "n": 2},
                                       {"task": "analysis", "reliable": [0], "n": 2}])  # fmt: skip
    assert reward(batch) == [1.0, 0.0, -1.0]


def test_reflectrm_reflects_in_both_orders_in_one_call():
    verdicts = {"1": "A", "2": "B", "3": "B"}

    def reply(prompt):
        if "most reliable" in prompt:  # a position-biased reflector: always the first listed analysis
            return "<choice>1</choice>"
        reply.k = getattr(reply, "k", 0) + 1
        return f"analysis {reply.k} <verdict>{verdicts[str(reply.k)]}</verdict>"

    backend = Scripted(reply)
    result = ReflectRM(backend, n_analyses=3).judge("q", "ra", "rb")
    assert len(backend.calls) == 2 and len(backend.calls[1]) == 2  # analyses, then both listing orders at once
    assert result.choices == (0, 2)  # forward picks analysis 1, reversed listing picks analysis 3
    assert result.preferred == "B" and result.chosen is None  # the picks disagree → majority of A, B, B


# ---- AC-GenRM / ACPO ---------------------------------------------------------------------------------------
def test_acgenrm_batches_a_group_and_judges_both_orders():
    def reply(prompt):
        if "<criteria>" in prompt:
            return "<criteria>correct</criteria>"
        a = re.search(r"Response A: (.*?)\n", prompt).group(1)
        return "<verdict>A</verdict>" if "right" in a else "<verdict>B</verdict>"

    backend = Scripted(reply)
    judge = ACGenRM(backend)
    groups = [("q1", ["right", "wrong one", "wrong two", "right too"], False), ("q2", ["x", "y"], False)]
    scores = acpo_group_rewards(groups, judge)
    assert [len(c) for c in backend.calls] == [2, 2 * (6 + 1)]  # criteria, then all 7 comparisons × 2 orders
    # q1: "right" vs "right too" → A both orders → disagree → tie; wrong-vs-wrong → B both → tie
    assert scores[0] == [4.0, -4.0, -4.0, 4.0] and scores[1] == [0.0, 0.0]
    # right-vs-right, wrong-vs-wrong and q2's x-vs-y follow position A in both orders: counted as inconsistent
    assert judge.last_stats["order_inconsistent"] == 3 and judge.last_stats["judge_calls"] == 14


# ---- the configs on a tiny judge ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-init Qwen2 and a BPE tokenizer trained on the judge prompts; the prompt files."""
    from agents.rewards.reflectrm import reflectrm_records
    from agents.rewards.tiny import build_tiny_judge
    from agents.rewards.training import acpo_records

    root = tmp_path_factory.mktemp("grm")
    pairs = countdown_pairs(3) + math_pairs(3)
    consist = consistrm_records(pairs, demonstrations=True)
    reflect = reflectrm_records(pairs, None)
    reflect.append({"prompt": "Which analysis is most reliable? Analysis 1: <verdict>A</verdict> Analysis 2: x",
                    "answer": {"task": "analysis", "reliable": [0], "n": 2}, "domain": "analysis"})  # fmt: skip
    files = {"consistrm": write_records_jsonl(root / "consistrm.jsonl", consist),
             "reflectrm": write_records_jsonl(root / "reflectrm.jsonl", reflect),
             "acpo": write_records_jsonl(root / "acpo.jsonl", acpo_records(pairs))}  # fmt: skip
    texts = [r["prompt"] for r in consist + reflect] + ["<criteria>correct</criteria> <verdict>A</verdict>"]
    return build_tiny_judge(root / "judge", texts, hidden_size=32), files


def _config(name, tiny, tmp_path, **extra):
    from agents.rl.config import RLConfig

    path, files = tiny
    overrides = {"policy.model": str(path), "task.params.path": str(files[name]), "trainer.steps": 2,
                 "trainer.prompts_per_step": 2, "rollout.group_size": 2, "rollout.settings.max_new_tokens": 12,
                 "trainer.output_dir": str(tmp_path / name), "trainer.progress": False, "trainer.lr": 1e-3}  # fmt: skip
    if name == "acpo":
        overrides["reward.params.backend"] = {"kind": "transformers", "model": str(path)}
        overrides["reward.params.max_new_tokens"] = 6
    if name == "consistrm":
        overrides["reward.params.model"] = None  # the encoder path is covered by the MiniLM test below
    overrides.update(extra)
    return RLConfig.from_yaml(f"configs/rm_{name}.yaml", overrides=overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["consistrm", "reflectrm", "acpo"])
def test_each_grm_config_runs_two_rl_steps(name, tiny, tmp_path):
    from agents.rewards.training import GRMTrainer

    trainer = GRMTrainer(_config(name, tiny, tmp_path))
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 2]
    assert all(m["reward_mean"] == m["reward_mean"] for m in history)
    assert (tmp_path / name / "checkpoints" / "step-2" / "policy" / "config.json").exists()
    if name == "consistrm":
        state = json.loads((tmp_path / name / "task_state" / "step-2.json").read_text())
        assert state["task"]["cursor"] == 4 and "metric/reflectrm_response" in history[-1]


@pytest.mark.slow
def test_consistrm_memory_survives_resume(tiny, tmp_path):
    """Two steps, stop, resume for two more == four steps straight: same memory, rewards and weights."""
    from agents.rewards.training import GRMTrainer

    warm = {"warmup.steps": 40, "warmup.lr": 5e-3, "warmup.batch_size": 8, "trainer.steps": 4, "trainer.save_every": 2,
            "rollout.settings.max_new_tokens": 16}  # fmt: skip
    straight = GRMTrainer(_config("consistrm", tiny, tmp_path / "a", **warm))
    full = straight.train()
    GRMTrainer(_config("consistrm", tiny, tmp_path / "b", **{**warm, "trainer.steps": 2})).train()
    resumed = GRMTrainer(_config("consistrm", tiny, tmp_path / "b", **warm))
    assert resumed.start_step == 2 and resumed.task.state_dict() == {"pass": 0, "cursor": 4}
    assert resumed.reward_fn.state_dict()["memory"]["items"]  # restored, not empty
    rest = resumed.train()
    assert [m["reward_mean"] for m in rest] == [m["reward_mean"] for m in full[2:]]
    assert resumed.reward_fn.state_dict() == straight.reward_fn.state_dict()
    votes = sum(len(v["votes"]) for v in straight.reward_fn.state_dict()["memory"]["items"].values())
    assert votes > 0  # the warmed-up judge writes verdicts: the memory holds real votes
    for a, b in zip(resumed.unwrapped.policy.parameters(), straight.unwrapped.policy.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_judge_prompts_task_errors_name_the_line(tmp_path):
    from embedkit.errors import DataFormatError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "answer": {"item": 1}}\n{"prompt": "q"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 2.*'answer'"):
        judge_prompts(str(bad))


@pytest.mark.slow
def test_cli_rewards_train_resumes_with_the_pass_position(tiny, tmp_path, capsys):
    from embedkit.cli import main

    path, files = tiny
    args = ["rewards", "train", "--config", "configs/rm_consistrm.yaml", "-q", "--output-dir", str(tmp_path / "run"),
            "--set", f"policy.model={path}", "--set", f"task.params.path={files['consistrm']}", "--set", "reward.params.model=null",
            "--set", "rollout.group_size=2", "--set", "trainer.prompts_per_step=3", "--set", "rollout.settings.max_new_tokens=6"]  # fmt: skip
    assert main([*args, "--steps", "1"]) == 0
    assert "step 1: reward_mean=" in capsys.readouterr().out
    assert main([*args, "--steps", "2"]) == 0
    state = json.loads((tmp_path / "run" / "task_state" / "step-2.json").read_text())
    assert state["task"] == {"pass": 0, "cursor": 6}  # resumed at 3, not restarted at 0
    assert main([*args, "--steps", "3", "--set", "trainer.prompts_per_step=0"]) == 2  # a config error, exit 2
