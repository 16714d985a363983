"""Hand-computed checks of every RL formula on small tensors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from agents.rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from agents.rl.aggregation import aggregate
from agents.rl.losses import kl_penalty, ppo_clip_loss
from agents.rl.regularizers import POLICY_TERMS, forking_mask, tre_k_entropy, tre_p_entropy
from agents.rl.rose import choose_branch, segment_advantages, semantic_entropy
from agents.rl.surgery import GRADIENT_SURGERY

Z = torch.tensor([2.0, 1.0, 0.0, -1.0])  # |V| = 4
H2 = math.log(math.e**2 + math.e) - (2 * math.e**2 + math.e) / (math.e**2 + math.e)  # entropy of softmax([2, 1])


# ---- TRE ---------------------------------------------------------------------------------------------------
def test_tre_k_two():
    assert tre_k_entropy(Z, k=2).item() == pytest.approx(H2 * math.log(4) / math.log(2), rel=1e-5)


def test_tre_k_one_is_logsumexp_minus_max():
    expected = math.log(sum(math.exp(v) for v in Z.tolist())) - 2.0
    assert tre_k_entropy(Z, k=1).item() == pytest.approx(expected, rel=1e-6)


def test_tre_k_full_vocab_equals_entropy():
    p = torch.softmax(Z, -1)
    assert tre_k_entropy(Z, k=4).item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-5)


def test_tre_p_nucleus_cases():
    # full probabilities ≈ [0.644, 0.237, 0.087, 0.032]; cumulative before ≈ [0, 0.644, 0.881, 0.968]
    assert tre_p_entropy(Z, p=0.8).item() == pytest.approx(H2 * math.log(4) / math.log(2), rel=1e-5)  # n = 2
    assert tre_p_entropy(Z, p=0.5).item() == 0.0  # n = 1
    p = torch.softmax(Z, -1)
    assert tre_p_entropy(Z, p=0.99).item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-5)  # n = 4
    assert tre_p_entropy(Z, p=0.99, top=2).item() == pytest.approx(H2 * 2, rel=1e-5)  # capped by top


def test_tre_term_is_minus_coef_token_mean_and_differentiable():
    logits = torch.stack([Z, Z.flip(0), torch.zeros(4)]).unsqueeze(0).requires_grad_(True)  # [1, 3, 4]
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = POLICY_TERMS.get("tre_k")(logits, mask, coef=0.5, k=2)
    assert out.loss.item() == pytest.approx(-0.5 * H2 * 2, rel=1e-5)  # masked third position ignored
    out.loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0


def test_forking_mask_top_fraction():
    entropy = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert forking_mask(entropy, mask, rho=0.2).tolist() == [[0, 1, 0], [0, 0, 0]]
    assert forking_mask(entropy, mask, rho=0.4).tolist() == [[0, 1, 0], [1, 0, 0]]


# ---- core losses -------------------------------------------------------------------------------------------
def test_ppo_clip_cases():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = ppo_clip_loss(logp, torch.zeros(4), adv, clip_low=0.2, clip_high=0.2)
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8], rel=1e-5)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2), rel=1e-6)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(0.5) * -1 - 1, rel=1e-6)
    assert kl_penalty(ref, ref, "k3").item() == 0.0


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(2.5)
    assert aggregate(values, mask, "seq-mean").item() == pytest.approx(3.0)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", norm_length=3).item() == pytest.approx(5 / 3)
    # slices with global denominators add up to the whole
    whole = aggregate(values, mask, "token-mean")
    parts = sum(aggregate(values[i : i + 1], mask[i : i + 1], "token-mean", total_tokens=4) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


# ---- advantage estimators ----------------------------------------------------------------------------------
def test_grpo_and_drgrpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5])
    mask = torch.ones(7, 2)
    inputs = AdvantageInputs(rewards=rewards, response_mask=mask, group_ids=[0, 0, 0, 1, 1, 1, 2])
    adv, _ = ADVANTAGE_ESTIMATORS.get("grpo")(inputs)
    std = math.sqrt(1 / 3)
    # group 2 has one response: verl's mean 0 / std 1, so its advantage is r / (1 + eps)
    assert adv[:, 0].tolist() == pytest.approx([2 / 3 / std, -1 / 3 / std, -1 / 3 / std, 0, 0, 0, 0.5 / (1 + 1e-6)],
                                               abs=1e-4)  # fmt: skip
    adv, _ = ADVANTAGE_ESTIMATORS.get("drgrpo")(inputs)
    assert adv[:, 1].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0.5], abs=1e-6)


def test_gae_skips_tool_tokens():
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 9.0, 0.4]])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0]), response_mask=mask, group_ids=[0], values=values)
    adv, returns = ADVANTAGE_ESTIMATORS.get("gae")(inputs)
    raw = torch.tensor([0.5, 0.8, 0.6])  # δ_3 = 0.6; δ_1 = 0.4 − 0.2; δ_0 = 0.2 − 0.5 (tool token skipped)
    assert returns[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])
    whitened = (raw - raw.mean()) / raw.std()
    assert adv[0, [0, 1, 3]].tolist() == pytest.approx(whitened.tolist(), abs=1e-4)
    assert adv[0, 2].item() == 0.0


# ---- ROSE --------------------------------------------------------------------------------------------------
def test_semantic_entropy_hand_value():
    logits = torch.tensor([math.log(3.0), 0.0, -10.0])
    z = 4.0 + math.exp(-10.0)
    p = [3 / z, 1 / z]  # raw top-2 probabilities of the full softmax (not renormalised over the two)
    h = -sum(q * math.log(q) for q in p)
    same = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # orthogonal candidates: F = 0
    assert semantic_entropy(logits, same, top=2).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0], [1.0, 1.0]])  # e_1 = −e_0
    f = (p[0] - p[1]) ** 2 - (p[0] ** 2 + p[1] ** 2)
    assert semantic_entropy(logits, opposite, top=2).item() == pytest.approx(-f * h, rel=1e-5)


def test_semantic_entropy_uses_raw_not_renormalised_probabilities():
    logits = torch.log(torch.tensor([3.0, 1.0, 4.0]))  # p = [3/8, 1/8, 4/8]; top-2 = tokens 2 and 0
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    h = -(0.5 * math.log(0.5) + 0.375 * math.log(0.375))
    f = (0.375 - 0.5) ** 2 - (0.5**2 + 0.375**2)  # = −0.375
    assert semantic_entropy(logits, emb, top=2).item() == pytest.approx(-f * h, rel=1e-6)
    renormalised = [4 / 7, 3 / 7]  # the other reading gives a different number
    h_r = -sum(q * math.log(q) for q in renormalised)
    f_r = (renormalised[0] - renormalised[1]) ** 2 - sum(q * q for q in renormalised)
    assert abs(semantic_entropy(logits, emb, top=2).item() - (-f_r * h_r)) > 1e-2


def test_choose_branch():
    se = [torch.tensor([9.0, 1.0, 3.0]), torch.tensor([5.0, 2.0, 4.0, 0.0])]
    masks = [torch.tensor([1, 1, 1]), torch.tensor([1, 1, 0, 1])]
    # the first maximum over every generated position (the official rollout scans positions from 0)
    assert choose_branch(se, masks, random.Random(0), epsilon=0.0) == (0, 0)
    masks = [torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0, 1])]  # tool tokens are never branch points
    assert choose_branch(se, masks, random.Random(0), epsilon=0.0) == (1, 0)
    assert choose_branch(se, masks, random.Random(0), epsilon=1.0) is None
    assert choose_branch([], [], random.Random(0), epsilon=0.0) is None


TREE = dict(rewards=[1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 0, 0], parents=[None, 0, 1, None],
            branch_positions=[0, 2, 4, 0])  # fmt: skip


def test_rose_segment_advantages_on_hand_built_tree():
    adv = segment_advantages(**TREE, lengths=[6, 5, 6, 4], width=6)
    s = 1 / 6  # V(2) − V(0) = 2/3 − 1/2
    expected = [
        [s, s, 1 / 3, 1 / 3, 1 / 3, 1 / 3],  # r0 − V(2)
        [s, s, -s, -s, -0.5, 0.0],  # V(4) − V(2) = 1/2 − 2/3; r1 − V(4)
        [s, s, -s, -s, 0.5, 0.5],
        [-0.5, -0.5, -0.5, -0.5, 0.0, 0.0],  # no branch: r3 − group mean
    ]
    assert adv.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_rose_length_aware_term_on_simple_tree():
    adv = segment_advantages(**TREE, lengths=[6, 5, 8, 4], width=8, length_alpha=1.0)
    # correct (reward != 0): r0 (L=6, the shortest) and r2 (L=8). S0 = {0, 2}, S2 = {0, 2, 4} → k_c = 2;
    # one factor 1 − (6 − 2)/(8 − 2) = 1/3 applied on [2, 8) only.
    s, f = 1 / 6, 1 / 3
    expected = [s, s, -s - s * f, -s - s * f] + [0.5 - 0.5 * f] * 4
    assert adv[2].tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[0, :6].tolist() == pytest.approx([1 / 6] * 2 + [1 / 3] * 4, abs=1e-6)  # shortest: untouched
    off = segment_advantages(**TREE, lengths=[6, 5, 8, 4], width=8, length_alpha=0.0)
    assert off[2, 4].item() == pytest.approx(0.5)


# Official readings where a path-based tree would give other numbers.
# (a) a child branching before its parent's branch point: r1 leaves r0 at 5, r2 leaves r1 at 2.
#     Sets: S0 = S1 = S2 = {0, 2, 5} (2 propagates up through r1 to r0 since 2 <= 5), S3 = {0}.
CHILD_BEFORE_PARENT = dict(group_ids=[0, 0, 0, 0], parents=[None, 0, 1, None], branch_positions=[0, 5, 2, 0])


def test_rose_child_branching_before_its_parents_branch_point():
    adv = segment_advantages(rewards=[1.0, 0.0, 0.0, 0.0], **CHILD_BEFORE_PARENT, lengths=[8, 8, 6, 4], width=8)
    v0, v = 1 / 4, 1 / 3  # V(0) over all four; V(2) = V(5) over r0, r1, r2
    expected = [
        [v - v0] * 2 + [0.0] * 3 + [1 - v] * 3,
        [v - v0] * 2 + [0.0] * 3 + [-v] * 3,
        [v - v0] * 2 + [0.0] * 3 + [-v] + [0.0] * 2,
        [-v0] * 4 + [0.0] * 4,
    ]
    assert adv.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_rose_same_position_on_different_paths_shares_one_value():
    # (b) r2 leaves r0 at 3 and r3 leaves r1 at 3: V(3) pools all four responses (a position, not a node)
    adv = segment_advantages(rewards=[1.0, 0.0, 0.0, 0.0], group_ids=[0] * 4, parents=[None, None, 0, 1],
                             branch_positions=[0, 0, 3, 3], lengths=[6, 6, 5, 4], width=6)  # fmt: skip
    expected = [[0.0] * 3 + [0.75] * 3, [0.0] * 3 + [-0.25] * 3, [0.0] * 3 + [-0.25] * 2 + [0.0],
                [0.0] * 3 + [-0.25] + [0.0] * 2]  # fmt: skip
    assert adv.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_rose_length_term_applies_from_k_common_and_correct_means_nonzero():
    # tree (a); r2 has reward 0.5: correct (!= 0) and the shortest correct (L=6). For r0 (L=10):
    # k_c = max(S2 ∩ S0, <= 6) = 5, factor = 1 − (6 − 5)/(10 − 5) = 4/5, applied on [5, 10) only.
    adv = segment_advantages(rewards=[1.0, 0.0, 0.5, 0.0], **CHILD_BEFORE_PARENT, lengths=[10, 8, 6, 4], width=10,
                             length_alpha=1.0)  # fmt: skip
    v0, v = 3 / 8, 1 / 2
    assert adv[0].tolist() == pytest.approx([v - v0] * 2 + [0.0] * 3 + [0.5 - 0.5 * 4 / 5] * 5, abs=1e-6)
    assert adv[2, :6].tolist() == pytest.approx([v - v0] * 2 + [0.0] * 3 + [0.0], abs=1e-6)
    assert adv[1, :8].tolist() == pytest.approx([v - v0] * 2 + [0.0] * 3 + [-v] * 3, abs=1e-6)  # not correct
    alpha2 = segment_advantages(rewards=[1.0, 0.0, 0.5, 0.0], **CHILD_BEFORE_PARENT, lengths=[10, 8, 6, 4],
                                width=10, length_alpha=2.0)  # fmt: skip
    assert alpha2[0, 5].item() == pytest.approx(0.5 - 0.5 * (1 - (1 / 5) ** 2), abs=1e-6)


def test_rose_estimator_without_branches_is_centred_reward():
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0]), response_mask=torch.ones(2, 3), group_ids=[0, 0])
    adv, _ = ADVANTAGE_ESTIMATORS.get("rose")(inputs)
    assert adv.tolist() == [[0.5] * 3, [-0.5] * 3]


# ---- gradient surgery --------------------------------------------------------------------------------------
def _grads(*domains):
    return {f"d{i}": [torch.tensor(t, dtype=torch.float64) for t in params] for i, params in enumerate(domains)}


def test_mgs_two_domains_per_parameter_vs_global_pcgrad():
    grads = _grads([[1.0, 0.0], [1.0, 1.0]], [[-1.0, 1.0], [1.0, 0.0]])
    out = GRADIENT_SURGERY.get("mgs")(grads, random.Random(0))
    # param A conflicts: g1 → (0.5, 0.5), g2 → (0, 1); param B does not conflict
    assert out[0].tolist() == pytest.approx([0.5, 1.5]) and out[1].tolist() == pytest.approx([2.0, 1.0])
    flat = GRADIENT_SURGERY.get("pcgrad")(grads, random.Random(0))
    assert flat[0].tolist() == pytest.approx([0.0, 1.0]) and flat[1].tolist() == pytest.approx([2.0, 1.0])
    plain = GRADIENT_SURGERY.get("none")(grads)
    assert plain[0].tolist() == pytest.approx([0.0, 1.0])


def test_mgs_three_domains_projects_against_original_gradients():
    grads = _grads([[1.0, 1.0, 0.0]], [[-1.0, 0.0, 0.0]], [[0.0, -1.0, 0.0]])
    # g1 → 0 in either order; g2 → (−.5, 0, 0) or (−.5, .5, 0); g3 → (0, −.5, 0) or (.5, −.5, 0)
    allowed = {(-0.5, -0.5, 0.0), (-0.5, 0.0, 0.0), (0.0, -0.5, 0.0), (0.0, 0.0, 0.0)}
    seen = set()
    for seed in range(12):
        out = GRADIENT_SURGERY.get("mgs")(grads, random.Random(seed))[0]
        key = tuple(round(v, 6) for v in out.tolist())
        assert key in allowed
        seen.add(key)
    assert len(seen) >= 2  # the shuffled order of j matters, and is really shuffled


def test_surgery_keeps_missing_gradients():
    grads = {"a": [torch.tensor([1.0]), None], "b": [torch.tensor([-1.0]), None]}
    out = GRADIENT_SURGERY.get("mgs")(grads, random.Random(0))
    assert out[1] is None and out[0].item() == pytest.approx(0.0)
