"""embedkit's verl estimators and loss, called by verl 0.9.1's own entry points with verl's own config.

- `verl.trainer.ppo.ray_trainer.compute_advantage` on a `DataProto` with `uid` in `non_tensor_batch`, with the
  `algorithm` section of verl's trainer config composed by hydra as `verl.trainer.main_ppo` composes it;
- `verl.workers.utils.losses.ppo_loss` with the `ActorConfig` verl's workers build from that config
  (`omega_conf_to_dataclass(config.actor_rollout_ref.actor)`), entropy bonus and KL loss included;
- the v1 trainer's advantage step, `verl.trainer.ppo.v1.utils.compute_advantage_for_multi_trajectories`,
  with the `{uid}_{session}_{index}` keys its agent loops write.

verl (and the TransferQueue its v1 trainer imports) are test dependencies: nothing here is skipped.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.utils import need_critic
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from agents.rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from agents.rl.aggregation import aggregate
from agents.rl.regularizers import POLICY_TERMS
from agents.rl.verl.actor import TRESettings
from agents.rl.verl_adapter import (
    ADV_ESTIMATORS,
    NOT_REGISTERED,
    POLICY_LOSSES,
    register_with_verl,
)
from embedkit.errors import EmbedkitError


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register_with_verl()


@pytest.fixture(scope="module")
def verl_config():
    """verl's trainer config as `verl.trainer.main_ppo` gets it: hydra composes `ppo_trainer` from the YAML
    verl ships in `verl/trainer/config`."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer",
                       overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])  # fmt: skip


def _with(config, **dotted):
    """A copy of the composed config with `a.b.c=value` overrides (verl's command-line form)."""
    copy = OmegaConf.create(OmegaConf.to_container(config))
    for key, value in dotted.items():
        OmegaConf.update(copy, key.replace("__", "."), value, merge=False)
    return copy


def _batch(seed: int = 0, b: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    mask[2, 1:3] = 0  # tool output in the middle
    mask[4, 2:] = 0
    rewards = torch.zeros(b, t)
    last = (mask * torch.arange(t)).argmax(-1)
    rewards[torch.arange(b), last] = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 2.0])
    old = torch.randn(b, t, generator=g) * 0.3 - 1.0
    new = old + torch.randn(b, t, generator=g) * 0.6
    new[0, 0] = old[0, 0] + 30.0  # beyond the ±20 log-ratio clamp
    new[3, 1] = old[3, 1] + 2.0  # ratio e² > clip_ratio_c = 3 with a negative advantage: dual clip
    adv = torch.randn(b, t, generator=g)
    adv[3, 1] = -1.0
    return rewards, mask, old, new, adv


UID = np.array(["a", "a", "b", "b", "b", "c"], dtype=object)  # "c": a one-response group


# ---- registration ---------------------------------------------------------------------------------------------
def test_registered_names_are_in_verls_registries_and_the_rest_refuse_with_the_reason(registered):
    assert registered == list(ADV_ESTIMATORS + POLICY_LOSSES)
    for name in ADV_ESTIMATORS:
        assert callable(core_algos.get_adv_estimator_fn(name))
    for name in POLICY_LOSSES:
        assert callable(core_algos.get_policy_loss_fn(name))
    assert set(NOT_REGISTERED) == {"embedkit_gae", "embedkit_rose", "embedkit_forking"}
    for name, reason in NOT_REGISTERED.items():
        with pytest.raises(EmbedkitError, match=f"'{name}' is not registered with verl") as info:
            register_with_verl([name])
        assert reason in str(info.value)
        if name == "embedkit_rose":  # registered with its agent loop and trainer by agents.rl.verl.rose
            continue
        lookup = core_algos.get_policy_loss_fn if name == "embedkit_forking" else core_algos.get_adv_estimator_fn
        with pytest.raises(ValueError):  # verl itself does not know the name either
            lookup(name)
    with pytest.raises(EmbedkitError, match="unknown embedkit verl name 'embedkit_nope'"):
        register_with_verl(["embedkit_nope"])
    assert register_with_verl(["embedkit_grpo"]) == ["embedkit_grpo"]  # registering again is harmless
    assert register_with_verl("embedkit_ppo_clip") == ["embedkit_ppo_clip"]  # one name, not its letters


# ---- advantages through ray_trainer.compute_advantage ---------------------------------------------------------
def _advantage(config, name: str, rewards, mask, values=None):
    """As `RayPPOTrainer.fit` calls it: the trainer config's algorithm section and its GRPO flag."""
    tensors = {"token_level_rewards": rewards.clone(), "response_mask": mask.clone()}
    if values is not None:
        tensors["values"] = values.clone()
    data = DataProto.from_dict(tensors=tensors, non_tensors={"uid": UID.copy()})
    algorithm = config.algorithm
    out = compute_advantage(data, adv_estimator=name, gamma=algorithm.gamma, lam=algorithm.lam,
                            num_repeat=config.actor_rollout_ref.rollout.n,
                            norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True),
                            config=algorithm)  # fmt: skip
    return out.batch["advantages"], out.batch["returns"]


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("name", ["embedkit_grpo", "embedkit_drgrpo"])
def test_grpo_estimators_through_compute_advantage_equal_verls_grpo(verl_config, name, norm):
    """The flag verl's trainer passes does not reach a registered estimator: ours read it from the config."""
    rewards, mask, *_ = _batch()
    config = _with(verl_config, algorithm__adv_estimator=name, algorithm__norm_adv_by_std_in_grpo=norm)
    ours, ours_ret = _advantage(config, name, rewards, mask)
    theirs, _ = _advantage(_with(config, algorithm__adv_estimator="grpo"), "grpo", rewards, mask)
    if name == "embedkit_drgrpo":  # Dr.GRPO never divides by the std, whatever the flag
        theirs, _ = _advantage(_with(config, algorithm__norm_adv_by_std_in_grpo=False), "grpo", rewards, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_ret, ours)
    assert ours[5, 0] != 0  # verl's one-response group: mean 0, std 1
    if norm and name == "embedkit_grpo":  # the normalised and centred readings differ on these rewards
        plain, _ = _advantage(_with(config, algorithm__norm_adv_by_std_in_grpo=False), name, rewards, mask)
        assert not torch.allclose(ours, plain)


def test_gae_is_verls_own_and_embedkits_gae_equals_it(verl_config):
    """embedkit_gae is not registered (verl never hands a registered estimator the critic values); the name to
    use, verl's `gae`, turns verl's critic on and computes what embedkit's own GAE computes."""
    rewards, mask, *_ = _batch(1)
    values = torch.randn(*mask.shape, generator=torch.Generator().manual_seed(3))
    config = _with(verl_config, algorithm__adv_estimator="gae", algorithm__gamma=0.9, algorithm__lam=0.8)
    assert need_critic(config)
    theirs, theirs_ret = _advantage(config, "gae", rewards, mask, values)
    ours, ours_ret = ADVANTAGE_ESTIMATORS.get("gae")(AdvantageInputs(
        rewards=torch.zeros(mask.shape[0]), response_mask=mask, group_ids=list(range(mask.shape[0])),
        values=values, gamma=0.9, lam=0.8, token_rewards=rewards))  # fmt: skip
    torch.testing.assert_close(ours * mask, theirs * mask, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_ret * mask, theirs_ret * mask, rtol=1e-5, atol=1e-6)
    # what a user who picked the old name gets: verl's critic off and no such estimator
    old = _with(verl_config, algorithm__adv_estimator="embedkit_gae")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not need_critic(old)
    with pytest.raises(ValueError, match="Unknown advantage estimator simply: embedkit_gae"):
        _advantage(old, "embedkit_gae", rewards, mask, values)


# ---- the v1 trainer's per-session GRPO ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi_trajectories():
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    return compute_advantage_for_multi_trajectories


def _sessions(outputs_per_session: list[list[int]], rewards: list[float]):
    """A v1 batch: prompt p<i>'s session s has outputs_per_session[i][s] outputs (keys `{uid}_{session}_{index}`),
    every output of a session carrying the session's reward (verl copies the final reward to the others)."""
    keys, uids, scores = [], [], []
    reward = iter(rewards)
    for p, sessions in enumerate(outputs_per_session):
        for s, n_outputs in enumerate(sessions):
            r = next(reward)
            for i in range(n_outputs):
                keys.append(f"p{p}_{s}_{i}")
                uids.append(f"p{p}")
                scores.append(r)
    b, t = len(keys), 4
    mask = torch.ones(b, t)
    mask[::2, 3] = 0
    token_rewards = torch.zeros(b, t)
    token_rewards[torch.arange(b), (mask * torch.arange(t)).argmax(-1)] = torch.tensor(scores)
    return keys, np.array(uids, dtype=object), token_rewards, mask


def _v1_advantage(fn, config, name, keys, uids, rewards, mask):
    """As the v1 trainer's `_compute_advantage` calls it."""
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards.clone(), "response_mask": mask.clone()},
                               non_tensors={"uid": uids.copy()})  # fmt: skip
    algorithm = config.algorithm
    out = fn(data, batch_keys=keys, adv_estimator=name, gamma=algorithm.gamma, lam=algorithm.lam,
             num_repeat=config.actor_rollout_ref.rollout.n,
             norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True), config=algorithm)  # fmt: skip
    return out.batch["advantages"]


@pytest.mark.parametrize(("name", "norm"), [("embedkit_grpo", True), ("embedkit_drgrpo", False)])
def test_v1_trainer_one_output_per_session_equals_verls_grpo(verl_config, multi_trajectories, name, norm):
    """With one output per session (every agent loop verl ships) the v1 path gives ours and `grpo` the same
    groups: `grpo` with norm_adv_by_std_in_grpo=False is the Dr.GRPO docs/rl.md points to."""
    keys, uids, rewards, mask = _sessions([[1, 1, 1], [1, 1], [1]], [1.0, 0.0, 0.5, 2.0, 0.0, 1.0])
    config = _with(verl_config, algorithm__adv_estimator=name, algorithm__norm_adv_by_std_in_grpo=norm)
    ours = _v1_advantage(multi_trajectories, config, name, keys, uids, rewards, mask)
    theirs = _v1_advantage(multi_trajectories, config, "grpo", keys, uids, rewards, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_v1_trainer_several_outputs_per_session_get_the_session_treatment_only_as_grpo(verl_config,
                                                                                      multi_trajectories):  # fmt: skip
    """What docs/rl.md states: verl 0.9.1 keys its per-session GRPO on the built-in name, and a registered
    estimator sees every output with the prompt uid (nothing tells the sessions apart), so with an agent loop
    that returns several outputs per session `embedkit_grpo` is not GRPO over sessions and `grpo` is the name
    to use. Should verl start treating registered estimators the same way, this test fails: update the docs."""
    # prompt p0: session 0 returns two outputs (reward 0), session 1 one output (reward 1)
    keys, uids, rewards, mask = _sessions([[2, 1]], [0.0, 1.0])
    config = _with(verl_config, algorithm__adv_estimator="grpo")
    verl_grpo = _v1_advantage(multi_trajectories, config, "grpo", keys, uids, rewards, mask)
    ours = _v1_advantage(multi_trajectories, config, "embedkit_grpo", keys, uids, rewards, mask)
    first = (mask.argmax(-1), torch.arange(len(keys)))
    # grpo: the sessions' final outputs [0, 1] form the group, ±1/√2 copied to every output of a session
    assert verl_grpo[first[1], first[0]].tolist() == pytest.approx([-0.7071, -0.7071, 0.7071], abs=1e-4)
    # a registered estimator: the three outputs [0, 0, 1] form the group
    assert ours[first[1], first[0]].tolist() == pytest.approx([-0.5774, -0.5774, 1.1547], abs=1e-4)


# ---- the policy loss through workers/utils/losses.ppo_loss ----------------------------------------------------
def _actor_config(verl_config, loss_mode: str, agg: str, **extra):
    """The ActorConfig verl's workers build: `omega_conf_to_dataclass(config.actor_rollout_ref.actor)`."""
    settings = {"policy_loss__loss_mode": loss_mode, "loss_agg_mode": agg, "clip_ratio_high": 0.28, **extra}
    dotted = {f"actor_rollout_ref__actor__{k}": v for k, v in settings.items()}
    return omega_conf_to_dataclass(_with(verl_config, **dotted).actor_rollout_ref.actor)


def _ppo_loss(config, old, new, adv, mask, *, weights=None, entropy=None, ref=None, dp_size=1,
              batch_num_tokens=None, global_batch_size=None):  # fmt: skip
    """verl's actor loss on a padded batch whose prompts are 2 tokens long (model outputs are unpadded)."""
    b, t = mask.shape
    p = 2

    def unpadded(per_token):
        flat = torch.zeros(b * (p + t))
        for row in range(b):
            flat[row * (p + t) + p - 1 : row * (p + t) + p - 1 + t] = per_token[row]
        return flat

    fields = {"prompts": torch.ones(b, p, dtype=torch.long), "responses": torch.ones(b, t, dtype=torch.long),
              "attention_mask": torch.ones(b, p + t, dtype=torch.long), "response_mask": mask.clone(),
              "old_log_probs": old, "advantages": adv}  # fmt: skip
    if weights is not None:
        fields["rollout_is_weights"] = weights
    if ref is not None:
        fields["ref_log_prob"] = ref
    data = TensorDict(fields, batch_size=[b])
    tu.assign_non_tensor(data, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                         global_batch_size=global_batch_size)  # fmt: skip
    output = {"log_probs": unpadded(new)}
    if entropy is not None:
        output["entropy"] = unpadded(entropy)
    return ppo_loss(config, output, data)


AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("with_weights", [False, True])
def test_ppo_clip_through_verls_actor_loss_equals_vanilla(verl_config, agg, with_weights):
    """With verl's entropy bonus and KL loss on: the whole actor loss and its metrics equal verl's `vanilla`."""
    _, mask, old, new, adv = _batch(2)
    g = torch.Generator().manual_seed(5)
    weights = torch.rand(*mask.shape, generator=g) + 0.5 if with_weights else None
    entropy = torch.rand(*mask.shape, generator=g) * 3
    ref = old + torch.randn(*mask.shape, generator=g) * 0.2
    extra = {"loss_scale_factor": 7} if agg == "seq-mean-token-sum-norm" else {}
    extra.update(entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.05, kl_loss_type="low_var_kl")
    results = {}
    for mode in ("embedkit_ppo_clip", "vanilla"):
        config = _actor_config(verl_config, mode, agg, **extra)
        assert config.policy_loss.loss_mode == mode and config.loss_agg_mode == agg
        results[mode] = _ppo_loss(config, old, new, adv, mask, weights=weights, entropy=entropy, ref=ref)
    (ours, ours_m), (theirs, theirs_m) = results["embedkit_ppo_clip"], results["vanilla"]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert {"actor/entropy_loss", "kl_loss", "actor/pg_loss", "actor/pg_clipfrac"} <= set(theirs_m)
    assert set(ours_m) == set(theirs_m)
    for key in theirs_m:
        value = getattr(theirs_m[key], "values", theirs_m[key])
        assert getattr(ours_m[key], "values", ours_m[key]) == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_ppo_clip_global_batch_normalisation_matches_vanilla(verl_config):
    """With dp_size / global token and sequence counts (set by verl per micro-batch) both losses agree."""
    _, mask, old, new, adv = _batch(4)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        kw = dict(dp_size=2, batch_num_tokens=40, global_batch_size=12)
        ours, _ = _ppo_loss(_actor_config(verl_config, "embedkit_ppo_clip", agg, loss_scale_factor=9), old, new, adv,
                            mask, **kw)  # fmt: skip
        theirs, _ = _ppo_loss(_actor_config(verl_config, "vanilla", agg, loss_scale_factor=9), old, new, adv, mask,
                              **kw)  # fmt: skip
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize(("kind", "params"), [("tre_k", {"k": 2}), ("tre_p", {"p": 0.9})])
def test_trainer_tre_term_equals_verls_entropy_bonus_with_tre_installed(verl_config, agg, kind, params):
    """verl's engine divides the logits by the rollout temperature before its logits processor (where embedkit's
    actor worker computes TRE, `agents.rl.verl.actor`) and aggregates per-token terms with `loss_agg_mode`: the
    TRE term of `embedkit rl train`, given the temperature and the loss's aggregation, is the same number (the
    whole worker path: tests/test_rl_verl_workers.py)."""
    _, mask, old, new, adv = _batch(8)
    temperature, scale = 0.7, 7
    logits = torch.randn(*mask.shape, 50, generator=torch.Generator().manual_seed(9)) * 3
    entropy = TRESettings(kind=kind, **params).entropy(logits / temperature)
    config = _actor_config(verl_config, "vanilla", agg, entropy_coeff=0.01, loss_scale_factor=scale)
    _, metrics = _ppo_loss(config, old, new, adv, mask, entropy=entropy)

    def reduce(values, m):
        return aggregate(values, m, agg, norm_length=scale)

    ours = POLICY_TERMS.get(kind)(logits, mask, coef=0.01, temperature=temperature, reduce=reduce, **params)
    assert [ours.metrics["tre_entropy"]] == pytest.approx(metrics["actor/entropy_loss"].values, rel=1e-5)
    assert ours.loss.item() == pytest.approx(-0.01 * ours.metrics["tre_entropy"], rel=1e-6)
