"""embedkit's RL formulas and verl adapters compared with verl's own functions, token by token.

Through verl's entry points (`compute_advantage`, `ppo_loss`, the v1 trainer) with verl's composed config:
tests/test_rl_verl_entrypoints.py. verl is a test dependency (`make test` installs it): nothing is skipped.
"""

from __future__ import annotations

import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F
from verl.workers.config import ActorConfig, PolicyLossConfig

from agents.rl.aggregation import aggregate, masked_whiten
from agents.rl.losses import kl_penalty, ppo_clip, token_log_probs, value_loss
from agents.rl.verl_adapter import register_with_verl


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register_with_verl()


def _batch(seed: int = 0, b: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    mask[2, 1:3] = 0  # tool output in the middle
    mask[4, 2:] = 0
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), (mask * torch.arange(t)).argmax(-1)] = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 2.0])
    old = torch.randn(b, t, generator=g) * 0.3 - 1.0
    new = old + torch.randn(b, t, generator=g) * 0.6
    new[0, 0] = old[0, 0] + 30.0  # beyond the ±20 log-ratio clamp
    new[3, 1] = old[3, 1] + 2.0  # ratio e² > clip_ratio_c = 3 with a negative advantage: dual clip
    adv = torch.randn(b, t, generator=g)
    adv[3, 1] = -1.0
    return rewards, mask, old, new, adv


def _actor_config(loss_mode: str, agg: str, loss_scale_factor=None, clip_low=0.2, clip_high=0.28) -> ActorConfig:
    return ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1, loss_agg_mode=agg,
                       clip_ratio_low=clip_low, clip_ratio_high=clip_high, loss_scale_factor=loss_scale_factor,
                       policy_loss=PolicyLossConfig(loss_mode=loss_mode))  # fmt: skip


def test_policy_loss_keyword_call_and_importance_weights_matter():
    """The exact keyword call of verl 0.9.1 (no positional arguments); the weights change the loss."""
    _, mask, old, new, adv = _batch(6)
    fn = core_algos.get_policy_loss_fn("embedkit_ppo_clip")
    config = _actor_config("embedkit_ppo_clip", "token-mean")
    kwargs = dict(old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask.bool(), loss_agg_mode="token-mean",
                  config=config)  # fmt: skip
    plain, _ = fn(**kwargs, rollout_is_weights=None)
    weighted, _ = fn(**kwargs, rollout_is_weights=torch.full_like(mask, 2.0))
    assert weighted.item() == pytest.approx(2 * plain.item(), rel=1e-6)


def test_dual_clip_and_log_ratio_clamp_per_token():
    _, mask, old, new, adv = _batch(0)
    config = _actor_config("vanilla", "token-mean")
    out = ppo_clip(new, old, adv, clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0)
    # verl's per-token matrix: its token-sum loss with a one-token mask per position
    for r, c in [(0, 0), (3, 1), (1, 1)]:
        one = torch.zeros_like(mask)
        one[r, c] = 1
        theirs, _ = core_algos.compute_policy_loss_vanilla(old, new, adv, one, "token-mean", config)
        assert out.loss[r, c].item() == pytest.approx(theirs.item(), rel=1e-6)
    assert out.loss[3, 1].item() == pytest.approx(3.0)  # −A·c with A = −1
    assert out.clipped_lower[3, 1].item() == 1.0


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_estimators_equal_verl(kind):
    logp = torch.tensor([[-1.0, -0.2, -30.0, -2.0]])
    ref = torch.tensor([[-1.5, -0.2, -0.1, -25.0]])  # extremes hit the ±20 and ±10 clamps of k3
    torch.testing.assert_close(kl_penalty(logp, ref, kind), core_algos.kl_penalty(logp, ref, kind))


def test_value_loss_and_aggregation_equal_verl():
    _, mask, old, new, _ = _batch(7)
    returns = torch.randn(*mask.shape, generator=torch.Generator().manual_seed(8))
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        theirs, _ = core_algos.compute_value_loss(vpreds=new, returns=returns, values=old, response_mask=mask,
                                                  cliprange_value=0.5, loss_agg_mode=agg)  # fmt: skip
        ours = 0.5 * aggregate(value_loss(new, old, returns, 0.5), mask, agg, norm_length=mask.shape[-1])
        torch.testing.assert_close(ours, theirs)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        ours = aggregate(new, mask, agg, norm_length=11)
        theirs = core_algos.agg_loss(new, mask, agg, loss_scale_factor=11)
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(masked_whiten(new, mask) * mask, verl_F.masked_whiten(new, mask) * mask)


def test_log_probs_use_the_sampling_temperature():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(9))
    tokens = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(10))
    theirs = verl_F.logprobs_from_logits(logits / 0.7, tokens)
    torch.testing.assert_close(token_log_probs(logits, tokens, temperature=0.7), theirs)
