"""verl adapters: verl's calling conventions on plain tensors, and registration when verl is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.rl.verl_adapter import (
    tre_entropy_from_logits,
    verl_drgrpo_advantage,
    verl_forking_loss,
    verl_grpo_advantage,
    verl_ppo_clip_loss,
    verl_rose_advantage,
)


def test_grpo_adapter_follows_verl_signature():
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 2.0, 2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float)
    index = np.array(["u1", "u1", "u2", "u2"], dtype=object)
    adv, ret = verl_grpo_advantage(rewards, mask, index)
    s = 1 / (np.sqrt(0.5) + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([0.5 * s, -0.5 * s, 0.0, 0.0], rel=1e-5)
    assert torch.equal(adv * (1 - mask), torch.zeros_like(adv)) and torch.equal(adv, ret)
    adv, _ = verl_drgrpo_advantage(rewards, mask, index)
    assert adv[:2, 0].tolist() == pytest.approx([0.5, -0.5])


def test_rose_adapter_with_tree_fields():
    rewards = torch.tensor([[1.0], [0.0]]).expand(2, 4).clone() * torch.tensor([0, 0, 0, 1.0])
    mask = torch.ones(2, 4)
    adv, _ = verl_rose_advantage(rewards, mask, ["a", "a"], rose_parents=[-1, 0], rose_branch_positions=[0, 2])
    # shared prefix [0, 2): V(2) − V(0) = 0; then r − V(2) = ±0.5
    assert adv.tolist() == [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, -0.5, -0.5]]


def test_policy_loss_adapters():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, metrics = verl_ppo_clip_loss(old, new, adv, mask, "token-mean", {"clip_ratio": 0.2})
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, rel=1e-5)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    loss, _ = verl_forking_loss(old, new, adv, mask, "token-mean", {"clip_ratio": 0.2, "forking_rho": 0.25},
                                entropy=torch.tensor([[0.1, 0.2, 0.9, 0.3]]))  # fmt: skip
    assert loss.item() == pytest.approx(-0.5, rel=1e-5)  # only the highest-entropy token
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert tre_entropy_from_logits(logits, "tre_k", k=1).item() == pytest.approx(
        float(torch.logsumexp(logits, -1) - 2.0), rel=1e-6)  # fmt: skip


def test_register_with_verl():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    from agents.rl.verl_adapter import probe_config, register_with_verl

    names = register_with_verl()
    assert core_algos.get_adv_estimator_fn("embedkit_grpo") is verl_grpo_advantage
    assert "embedkit_ppo_clip" in core_algos.POLICY_LOSS_REGISTRY and "embedkit_rose" in names
    # our loss returns what this verl version's own vanilla loss returns (tuple arity differs across versions)
    old, new, adv, mask = torch.zeros(2, 3), torch.full((2, 3), -0.1), torch.ones(2, 3), torch.ones(2, 3)
    config = probe_config()
    ours = core_algos.get_policy_loss_fn("embedkit_ppo_clip")(old, new, adv, mask, "token-mean", config)
    theirs = core_algos.get_policy_loss_fn("vanilla")(old, new, adv, mask, "token-mean", config)
    assert len(ours) == len(theirs)
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=1e-5)
