"""The RL loop end to end on a tiny model: rollouts with a tool, every algorithm combination, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agents.rl.config import RLConfig
from agents.rl.rollout import RolloutEngine, RolloutSettings, pack
from agents.rl.tasks import Example
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from agents.rl.trainer import RLTrainer
from agents.rl.warmup import demonstration_tokens, sft_warmup
from embedkit.cli import main
from embedkit.errors import DataFormatError

torch.set_num_threads(2)

DEMO = "<search> apple </search> <information> apple is 7 </information> <answer> 7 </answer>"


@pytest.fixture(scope="module")
def search_policy():
    """A tiny model overfit on one tool-using demonstration, so greedy decoding follows it."""
    tok = build_char_tokenizer()
    model = build_tiny_causal_lm(tok, seed=1)
    sft_warmup(model, tok, [Example("find apple:", "7", demonstration=DEMO)], steps=250, lr=1e-2, batch_size=4)
    return model, tok


@pytest.mark.slow
def test_demonstration_mask_excludes_information(search_policy):
    _, tok = search_policy
    ids, mask = demonstration_tokens(tok, Example("find apple:", "7", demonstration=DEMO))
    masked_text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m == 0])
    assert masked_text == "find apple:<information> apple is 7 </information>"


@pytest.mark.slow
def test_multi_turn_rollout_masks_tool_output(search_policy):
    model, tok = search_policy
    calls = []

    def tool(query: str) -> str:
        calls.append(query)
        return f"{query} is 7"

    settings = RolloutSettings(max_new_tokens=60, temperature=0.0,
                               information_template=" <information> {result} </information> ")  # DEMO's format
    traj = RolloutEngine(model, tok, settings, tool=tool).sample(["find apple:"], group_size=2)
    for t in traj:
        assert t.tool_calls == ["apple"] and t.turns == 1 and t.finished
        assert t.text.endswith("<answer> 7 </answer>")
        tool_text = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 0])
        assert tool_text == " <information> apple is 7 </information> "
        policy_text = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 1])
        assert policy_text.startswith("<search> apple </search>")
    assert calls == ["apple"]  # identical queries of one turn reach the tool once
    batch = pack(traj, tok.pad_token_id)
    assert batch["response_mask"].sum().item() == sum(sum(t.loss_mask) for t in traj)
    # the response index points at the logits that predict each response token
    row = traj[0]
    assert batch["input_ids"][0, batch["response_index"][0, 0] + 1].item() == row.response_ids[0]


@pytest.mark.slow
def test_rollout_without_tool_stops_at_answer(search_policy):
    model, tok = search_policy
    traj = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=40, temperature=0.0)).sample(["find apple:"], 1)
    assert traj[0].turns == 0 and all(m == 1 for m in traj[0].loss_mask)  # no tool: nothing injected


def _config(tmp_path: Path, **sections) -> RLConfig:
    base = {
        "task": {"name": "digit_map", "params": {"domains": ["next", "double"]}},
        "warmup": {"steps": 2, "batch_size": 8},
        "reward": {"name": "format", "params": {"pattern": "[0-9]"}},  # varies even for a random policy
        "rollout": {"group_size": 3, "settings": {"max_new_tokens": 6}},
        "trainer": {"steps": 2, "prompts_per_step": 4, "lr": 1e-3, "output_dir": str(tmp_path / "run"),
                    "progress": False},
    }  # fmt: skip
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return RLConfig.from_dict(base)


@pytest.mark.parametrize(
    "sections",
    [
        {"algorithm": {"estimator": "grpo", "kl_coef": 0.05}, "term": {"name": "tre_k", "params": {"k": 2}},
         "trainer": {"lr_warmup_steps": 4}},
        {"algorithm": {"estimator": "drgrpo"}, "term": {"name": "tre_p"}, "surgery": {"name": "mgs"}},
        {"algorithm": {"estimator": "rose", "length_alpha": 1.0}, "rollout": {"strategy": "rose"},
         "term": {"name": "forking"}},
        {"algorithm": {"estimator": "gae", "kl_estimator": "k1", "kl_coef": 0.01, "mini_batches": 2},
         "term": {"name": "entropy"}, "surgery": {"name": "pcgrad"}},
    ],
    ids=["grpo-tre_k-kl", "drgrpo-tre_p-mgs", "rose-forking", "ppo-gae-pcgrad"],
)
@pytest.mark.slow
def test_training_loop_combinations(tmp_path, sections):
    trainer = RLTrainer(_config(tmp_path, **sections))
    before = [p.detach().clone() for p in trainer.unwrapped.policy.parameters()]
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 2]
    for m in history:
        for key in ("reward_mean", "entropy", "response_length", "clip_frac", "loss", "reward/next", "reward/double"):
            assert key in m and m[key] == m[key]  # present and not NaN
    if sections["algorithm"].get("kl_coef"):
        assert "kl" in history[-1]
    if sections.get("trainer", {}).get("lr_warmup_steps"):  # one update per step: 1/4, 2/4 of 1e-3
        assert [m["lr"] for m in history] == pytest.approx([2.5e-4, 5e-4])
    if sections["algorithm"]["estimator"] == "gae":
        assert "value_loss" in history[-1]
    after = list(trainer.unwrapped.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "reward_mean" in (run / "metrics.csv").read_text().splitlines()[0]
    assert (run / "checkpoints" / "step-2" / "policy" / "config.json").exists()


@pytest.mark.slow
def test_rose_rollout_builds_branch_tree(tmp_path):
    trainer = RLTrainer(_config(tmp_path, rollout={"strategy": "rose", "group_size": 4,
                                                   "settings": {"max_new_tokens": 6, "rose_epsilon": 0.0}}))  # fmt: skip
    traj = trainer.rollout_fn(trainer.engine, ["next 1:", "double 2:"], 4)
    assert len(traj) == 8
    for group in (traj[:4], traj[4:]):
        assert group[0].parent is None  # the first response starts from the root
        for t in group[1:]:  # ε = 0: every later response branches from an earlier one
            assert t.parent is not None and 0 <= t.branch_position
            parent = group[t.parent]
            assert t.response_ids[: t.branch_position] == parent.response_ids[: t.branch_position]


@pytest.mark.slow
def test_resume_continues_from_checkpoint(tmp_path):
    RLTrainer(_config(tmp_path)).train()
    resumed = RLTrainer(_config(tmp_path, trainer={"steps": 3}))
    assert resumed.start_step == 2 and resumed.warmup_losses == []
    history = resumed.train()
    assert [m["step"] for m in history] == [3]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert RLTrainer(_config(tmp_path, trainer={"steps": 3})).train() == []  # already done


def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(DataFormatError, match="unknown advantage estimator 'reinforce'"):
        RLConfig.from_dict({"algorithm": {"estimator": "reinforce"}})
    with pytest.raises(DataFormatError, match="rollout"):
        RLConfig.from_dict({"rollout": {"group_size": "many"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(DataFormatError, match="bad.yaml"):
        RLConfig.from_yaml(bad)


@pytest.mark.slow
def test_cli_train_and_plot(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(_config(tmp_path).to_yaml())
    assert main(["rl", "train", "--config", str(config), "--steps", "1", "--set", "rollout.group_size=2", "-q"]) == 0
    assert "step 1: reward_mean=" in capsys.readouterr().out
    png = tmp_path / "curves.png"
    assert main(["rl", "plot", f"grpo={tmp_path / 'run'}", "--out", str(png), "--metrics", "reward_mean,entropy"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["rl", "plot", str(tmp_path / "run"), "--out", str(png), "--metrics", "nope"]) == 2
    assert main(["rl", "train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["rl", "train", "--config", str(config), "--set", "algorithm.estimator=nope"]) == 2
