"""TRE and MGS inside verl 0.9.1's own actor update, on a CPU (tests/verl_cpu.py: a test-only verl platform).

Each test builds embedkit's actor worker (`EmbedkitActorRolloutRefWorker(role="actor")`, `init_model()`) from
hydra's composition of verl's shipped `ppo_trainer` YAML, and runs `update_actor` → verl's `TrainingWorker`
→ verl's FSDP2 engine → verl's `ppo_loss`, on a 2-layer random-init Qwen2 in fp32. The reference numbers come
from a plain HF forward pass of the same weights and embedkit's own trainer pieces (`agents.rl.losses`,
`agents.rl.regularizers`, `agents.rl.surgery`), which tests/test_rl_formulas.py pins to the official formulas.
"""

from __future__ import annotations

import random

import pytest
import torch

from agents.rl.aggregation import aggregate
from agents.rl.losses import full_entropy, ppo_clip, token_log_probs
from agents.rl.regularizers import POLICY_TERMS
from agents.rl.surgery import GRADIENT_SURGERY
from agents.rl.verl.actor import (
    TRE_OUTPUT,
    EmbedkitActorRolloutRefWorker,
    actor_settings,
    check_supported,
    domain_micro_batches,
)
from agents.rl.verl.batch import actor_batch
from embedkit.errors import EmbedkitError
from tests import verl_cpu

FP32 = "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
NO_CLIP = "actor_rollout_ref.actor.optim.clip_grad=1.0e9"  # the gradients stay as computed, for comparison
TEMPERATURE = 0.7


@pytest.fixture(scope="module", autouse=True)
def cpu_platform():
    with verl_cpu.cpu_platform():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return verl_cpu.write_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")


def _on_policy(reference, fields):
    """old_log_probs = the policy's own log-probs (ratio 1: no token is clipped, every token has a gradient)."""
    with torch.no_grad():
        logits = verl_cpu.response_logits(reference, fields)
    fields["old_log_probs"] = token_log_probs(logits, fields["responses"], temperature=TEMPERATURE)
    return fields


def _update_capturing_grads(worker, batch):
    """`update_actor`, with the gradients the optimizer steps with captured by a torch step pre-hook (verl
    clears them afterwards)."""
    module, grads = worker.actor.engine.module, {}

    def capture(*_):
        grads.update({name: p.grad.full_tensor().clone() for name, p in module.named_parameters()
                      if p.grad is not None})  # fmt: skip

    handle = worker.actor.engine.optimizer.register_step_pre_hook(capture)
    try:
        out = worker.update_actor(batch)
    finally:
        handle.remove()
    return out, grads


# ---- MGS -------------------------------------------------------------------------------------------------------
DOMAINS = ["math", "math", "chat", "chat", "math", "chat"]
MICRO = 2


@pytest.fixture(scope="module")
def mgs_update(model_dir, reference):
    worker, _ = verl_cpu.build_actor(EmbedkitActorRolloutRefWorker, model_dir, [
        FP32, NO_CLIP, f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=6", "+actor_rollout_ref.embedkit.mgs.surgery=mgs",
        "+actor_rollout_ref.embedkit.mgs.seed=0",
    ])  # fmt: skip
    fields = _on_policy(reference, verl_cpu.padded_fields(n=6, prompt_len=3, response_len=6, seed=3))
    before = {n: p.detach().full_tensor().clone() for n, p in worker.actor.engine.module.named_parameters()}
    out, grads = _update_capturing_grads(worker, actor_batch(fields, domains=DOMAINS,
                                                                         temperature=TEMPERATURE))  # fmt: skip
    return worker, fields, grads, before, out


def _close(got, expected, name):
    """fp32 equality up to summation order: 1e-4 relative, 1e-5 of the tensor's largest entry absolute."""
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()),
                               msg=lambda m: f"{name}: {m}")  # fmt: skip


def _domain_grads(reference, fields, parts, scale):
    """Official MGS actor: per micro-batch, the token-mean PPO loss of that micro-batch × 1/accumulation,
    backward, gradients summed per domain (own pieces: embedkit's ppo_clip, aggregate, token_log_probs)."""
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for domain, rows in parts:
        reference.zero_grad()
        sub = {k: v[rows] for k, v in fields.items()}
        logp = token_log_probs(verl_cpu.response_logits(reference, sub), sub["responses"], temperature=TEMPERATURE)
        out = ppo_clip(logp, sub["old_log_probs"], sub["advantages"], clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
        (aggregate(out.loss, sub["response_mask"], "token-mean") * scale).backward()
        acc = grads.setdefault(domain, {})
        for name, p in reference.named_parameters():
            if p.grad is not None:
                acc[name] = acc[name] + p.grad if name in acc else p.grad.clone()
    reference.zero_grad()
    return grads


def _surgery(grads, name):
    names = sorted(next(iter(grads.values())))
    per_domain = {d: [g[n] for n in names] for d, g in grads.items()}
    return dict(zip(names, GRADIENT_SURGERY.get(name)(per_domain, random.Random(0)), strict=True))


def test_micro_batches_hold_one_domain_each():
    assert domain_micro_batches(DOMAINS, 2) == [("math", [0, 1]), ("math", [4]), ("chat", [2, 3]), ("chat", [5])]


@pytest.mark.slow  # one real verl actor update (FSDP2 on gloo)
def test_mgs_in_verls_actor_update_equals_embedkits_projection(mgs_update, reference):
    """One real `update_actor`: the gradients verl steps with are embedkit's per-module projection of the
    per-domain gradients, each micro-batch's loss normalised over itself × 1/accumulation (3 micro-batches of
    2 rows). Two readings that would give other numbers are checked to differ: no surgery, and one mean per
    domain instead of one per micro-batch."""
    worker, fields, verl_grads, before, out = mgs_update
    parts = [("math", [0, 1]), ("math", [4]), ("chat", [2, 3]), ("chat", [5])]
    grads = _domain_grads(reference, fields, parts, scale=1 / 3)
    ours = _surgery(grads, "mgs")
    assert set(ours) == set(verl_grads)
    for name, grad in ours.items():
        _close(verl_grads[name], grad, name)
    plain = _surgery(grads, "none")
    conflicted = [n for n in ours if not torch.allclose(ours[n], plain[n], rtol=1e-3, atol=1e-7)]
    assert conflicted, "the two domains never conflicted: the test would not tell MGS from a plain sum"
    per_domain = _surgery(_domain_grads(reference, fields, [("math", [0, 1, 4]), ("chat", [2, 3, 5])], 1.0), "mgs")
    assert any(not torch.allclose(per_domain[n], verl_grads[n], rtol=1e-2) for n in ours)
    metrics = out["metrics"]
    assert metrics["mgs/domains"] == [2] and "actor/pg_loss" in metrics and metrics["grad_norm"][0] > 0
    after = dict(worker.actor.engine.module.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach().full_tensor()) for n in before)  # the step happened


@pytest.mark.slow  # one real verl actor update (FSDP2 on gloo)
def test_mgs_pcgrad_projects_the_whole_model(mgs_update, reference):
    """The same domain gradients through whole-model PCGrad give other numbers than per-module MGS."""
    _, fields, verl_grads, _, _ = mgs_update
    grads = _domain_grads(reference, fields, [("math", [0, 1]), ("math", [4]), ("chat", [2, 3]), ("chat", [5])],
                          scale=1 / 3)  # fmt: skip
    pcgrad = _surgery(grads, "pcgrad")
    assert any(not torch.allclose(pcgrad[n], verl_grads[n], rtol=1e-3, atol=1e-7) for n in pcgrad)


# ---- TRE -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tre_update(model_dir, reference):
    kind, params = "tre_k", {"k": 2}
    settings = [f"+actor_rollout_ref.embedkit.tre.{k}={v}" for k, v in {"kind": kind, "coef": 0.5, **params}.items()]
    worker, _ = verl_cpu.build_actor(EmbedkitActorRolloutRefWorker, model_dir, [
        FP32, NO_CLIP, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.entropy_coeff=0.01", *settings,
    ])  # fmt: skip
    fields = _on_policy(reference, verl_cpu.padded_fields(n=4, prompt_len=3, response_len=6, seed=5))
    batch = actor_batch(fields, temperature=TEMPERATURE, calculate_entropy=True)
    out, grads = _update_capturing_grads(worker, batch)
    return kind, params, fields, out["metrics"], grads


@pytest.mark.slow  # one real verl actor update (FSDP2 on gloo)
def test_tre_in_verls_actor_equals_the_trainers_term(tre_update, reference):
    """`actor/tre_entropy` from verl's update is embedkit's TRE term on softmax(logits / T) aggregated with the
    actor's loss_agg_mode (seq-mean-token-mean over the 4-row mini-batch, in 2 micro-batches verl sums); raw
    logits or token-mean would give other numbers. verl's own entropy metric stays the full entropy."""
    kind, params, fields, metrics, _ = tre_update
    with torch.no_grad():
        logits = verl_cpu.response_logits(reference, fields)
    mask = fields["response_mask"]

    def term(temperature, mode):
        out = POLICY_TERMS.get(kind)(logits, mask, coef=0.5, temperature=temperature,
                                     reduce=lambda v, m: aggregate(v, m, mode), **params)  # fmt: skip
        return out.metrics["tre_entropy"]

    ours = term(TEMPERATURE, "seq-mean-token-mean")
    assert metrics["actor/tre_entropy"] == pytest.approx([ours], rel=1e-4)  # one mini-batch
    assert abs(term(1.0, "seq-mean-token-mean") - ours) > 1e-2 * ours  # 100× the tolerance above
    assert abs(term(TEMPERATURE, "token-mean") - ours) > 1e-2 * ours
    full = aggregate(full_entropy(logits, TEMPERATURE), mask, "seq-mean-token-mean").item()
    assert metrics["actor/entropy_loss"] == pytest.approx([full], rel=1e-4)  # verl's logged entropy, untouched


@pytest.mark.slow  # one real verl actor update (FSDP2 on gloo)
def test_tre_gradient_is_the_policy_gradient_minus_coef_tre(tre_update, reference):
    """The gradient verl steps with is that of pg_loss − 0.01·H − 0.5·TRE, each seq-mean-token-mean."""
    kind, params, fields, _, verl_grads = tre_update
    reference.zero_grad()
    logits = verl_cpu.response_logits(reference, fields)
    mask = fields["response_mask"]
    logp = token_log_probs(logits, fields["responses"], temperature=TEMPERATURE)
    out = ppo_clip(logp, fields["old_log_probs"], fields["advantages"], clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    agg = "seq-mean-token-mean"
    tre = POLICY_TERMS.get(kind)(logits, mask, coef=0.5, temperature=TEMPERATURE,
                                 reduce=lambda v, m: aggregate(v, m, agg), **params).loss  # fmt: skip
    loss = aggregate(out.loss, mask, agg) - 0.01 * aggregate(full_entropy(logits, TEMPERATURE), mask, agg) + tre
    loss.backward()
    for name, p in reference.named_parameters():
        _close(verl_grads[name], p.grad, name)
    reference.zero_grad()


# ---- what is refused at start ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    (["+actor_rollout_ref.embedkit.tre.kind=tre_k", "actor_rollout_ref.model.use_fused_kernels=true"],
     "use_fused_kernels=True computes log-probs and entropy inside the fused LM-head kernel"),
    (["+actor_rollout_ref.embedkit.tre.kind=tre_k", "actor_rollout_ref.actor.strategy=megatron"],
     "actor.strategy=megatron is not supported"),
    (["+actor_rollout_ref.embedkit.mgs.surgery=mgs", "actor_rollout_ref.actor.use_dynamic_bsz=true"],
     "set actor_rollout_ref.actor.use_dynamic_bsz=false"),
    (["+actor_rollout_ref.embedkit.tre.kind=tre_x"], "actor_rollout_ref.embedkit.tre.kind: Input should be"),
    (["+actor_rollout_ref.embedkit.mgs.typo=1"], "actor_rollout_ref.embedkit.mgs.typo: Extra inputs"),
])  # fmt: skip
def test_unsupported_settings_are_refused_with_the_reason(model_dir, overrides, message):
    config = verl_cpu.compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *overrides])
    with pytest.raises(EmbedkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_supported(config.actor_rollout_ref, actor_settings(config.actor_rollout_ref))


def test_fused_kernels_refused_when_the_worker_is_built(model_dir):
    """In the worker itself (every Ray worker runs this), before any model is loaded."""
    verl_cpu.init_gloo()
    config = verl_cpu.compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *verl_cpu.CPU_ACTOR_OVERRIDES,
                                           "+actor_rollout_ref.embedkit.tre.kind=tre_p",
                                           "actor_rollout_ref.model.use_fused_kernels=true"])  # fmt: skip
    with pytest.raises(EmbedkitError, match="TRE needs the logits"):
        EmbedkitActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")


@pytest.mark.parametrize(("kind", "params"), [("tre_k", {"k": 1}), ("tre_k", {"k": 3}), ("tre_p", {"p": 0.9}),
                                              ("tre_p", {"p": 0.5, "top": 4})])  # fmt: skip
def test_tre_settings_entropy_is_the_trainers(kind, params):
    """The worker's per-token TRE (what the engine's logits-processor call returns, under `TRE_OUTPUT`) is the
    trainer's TRE entropy of the same (already temperature-scaled) logits, for every kind the worker runs."""
    from agents.rl.regularizers import tre_k_entropy, tre_p_entropy
    from agents.rl.verl.actor import TRELoss, TRESettings

    logits = torch.randn(1, 7, 50, generator=torch.Generator().manual_seed(2)) * 3
    settings = TRESettings(kind=kind, **params)
    got = TRELoss(lambda **_: None, None, settings)(student_logits=logits, data=None)[TRE_OUTPUT]
    expected = tre_k_entropy(logits, **params) if kind == "tre_k" else tre_p_entropy(logits, **params)
    torch.testing.assert_close(got, expected)
    assert got.shape == (1, 7)


def test_tre_loss_without_the_processors_output():
    """A training micro-batch without the TRE values is an error (never a silent loss without TRE); a
    forward-only loss (verl's infer_batch with compute_loss) is verl's own loss."""
    from agents.rl.verl.actor import TRELoss, TRESettings

    loss = TRELoss(lambda **_: (torch.tensor(1.5), {"actor/pg_loss": 1.5}), None, TRESettings(kind="tre_k"))
    with pytest.raises(EmbedkitError, match="no per-token TRE entropy"):
        loss(model_output={}, data=None)
    with torch.no_grad():
        assert loss(model_output={}, data=None)[0].item() == 1.5


def test_worker_group_binds_the_same_methods_with_the_same_dispatch():
    """verl's worker group binds the methods that carry verl's `register` mark (`WorkerGroup._bind_worker_method`
    reads MAGIC_ATTR over `dir(cls)`): embedkit's worker offers every method of verl's, `init_model` included
    (overridden, re-marked), with the same dispatch, execute and blocking settings."""
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.workers.engine_workers import ActorRolloutRefWorker

    def marks(cls):
        return {name: getattr(getattr(cls, name), MAGIC_ATTR) for name in dir(cls)
                if callable(getattr(cls, name, None)) and hasattr(getattr(cls, name), MAGIC_ATTR)}  # fmt: skip

    ours, theirs = marks(EmbedkitActorRolloutRefWorker), marks(ActorRolloutRefWorker)
    assert "init_model" in theirs and "update_actor" in theirs
    assert ours == theirs
    assert EmbedkitActorRolloutRefWorker.init_model is not ActorRolloutRefWorker.init_model
