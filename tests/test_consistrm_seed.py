"""ConsistRM's per-item memory seeded from precomputed scores, as the official trainer seeds it from its data's
`median_score_list`, and the official KL setting in configs/rm_consistrm.yaml: `embedkit rewards train` in a
subprocess on a tiny random-init judge, then the memory read back from the checkpoint."""

from __future__ import annotations

import json

import pytest

from agents.rewards.pair_data import countdown_pairs, math_pairs
from agents.rewards.training import consistrm_records, write_records_jsonl
from embedkit.torch_load import load_tensors
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow  # subprocesses


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory):
    from agents.rewards.tiny import build_tiny_judge

    root = tmp_path_factory.mktemp("consistrm_seed")
    pairs = countdown_pairs(2) + math_pairs(2)
    records = consistrm_records(pairs, demonstrations=True)
    prompts = write_records_jsonl(root / "prompts.jsonl", records)
    model = build_tiny_judge(root / "judge", [r["prompt"] for r in records], hidden_size=32)
    # Items alternate between a history that says "the first response" (+1) and one that says "the second" (-1).
    seeds = {pair.id: [1.0, 1.0, 0.5] if k % 2 == 0 else [-1.0, -1.0, -0.5] for k, pair in enumerate(pairs)}
    seed_file = root / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps({"item": i, "median_score_list": s}) + "\n" for i, s in seeds.items()),
                         encoding="utf-8")  # fmt: skip
    return model, prompts, seed_file, seeds


def _train(model, prompts, out, *extra):
    return embedkit("rewards", "train", "--config", "configs/rm_consistrm.yaml", "-q", "--output-dir", out,
                    "--set", f"policy.model={model}", "--set", f"task.params.path={prompts}",
                    "--set", "reward.params.model=null", "--set", "rollout.group_size=2",
                    "--set", "trainer.prompts_per_step=4", "--set", "rollout.settings.max_new_tokens=6",
                    "--steps", "1", *extra)  # fmt: skip


def test_memory_starts_from_the_seeded_scores(judge_files, tmp_path):
    model, prompts, seed_file, seeds = judge_files
    result = _train(model, prompts, tmp_path / "run", "--set", f"reward.params.seed_scores={seed_file}")
    assert result.returncode == 0, result.stderr
    state = load_tensors(tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.pt")["reward"]
    items = state["memory"]["items"]
    assert items and set(items) <= set(seeds)
    for item, memory in items.items():
        assert memory["labels"] == seeds[item]  # round 0 is still open: the history is exactly the seed
        # ŷ = sign(mean(votes) + mean(seed)): a seed of mean ±0.83 can only be confirmed or cancelled, never flipped
        seed_sign = 1 if seeds[item][0] > 0 else -1
        assert state["last_labels"][item] * seed_sign >= 0


def test_bad_seed_files_are_refused_with_file_and_line(judge_files, tmp_path):
    model, prompts, _, _ = judge_files
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item": "a", "median_score_list": [1]}\n{"item": "b", "median_score_list": [7]}\n',
                   encoding="utf-8")  # fmt: skip
    result = _train(model, prompts, tmp_path / "bad_run", "--set", f"reward.params.seed_scores={bad}")
    assert_user_error(result, "bad.jsonl", "line 2", "median_score_list")
    assert not (tmp_path / "bad_run" / "checkpoints").exists()


def test_config_has_the_official_kl_setting():
    from agents.rl.config import RLConfig

    config = RLConfig.from_yaml("configs/rm_consistrm.yaml")
    # official run: actor.use_kl_loss=True, kl_loss_coef=0.001, kl_loss_type=low_var_kl (k3), no KL in the reward
    assert config.algorithm.kl_coef == 0.001 and config.algorithm.kl_estimator == "k3"
    assert config.reward.params["seed_scores"] is None and config.trainer.lr == 1e-6 and config.rollout.group_size == 8
