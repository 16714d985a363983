"""The trainer's loss assembly, micro-batching, precision, schedules, resume and rollout backends on a tiny model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from agents.rl.config import RLConfig
from agents.rl.losses import chunked_log_probs, token_log_probs
from agents.rl.rollout import Trajectory, encode_prompt
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from agents.rl.trainer import RLTrainer, estimate_memory
from embedkit.errors import DataFormatError

torch.set_num_threads(2)
TIMING = {"rollout_s", "step_s"}


def _config(tmp_path: Path, **sections) -> RLConfig:
    base = {
        "task": {"name": "digit_map", "params": {"domains": ["next", "double"]}},
        "reward": {"name": "format", "params": {"pattern": "[0-9]"}},
        "rollout": {"group_size": 3, "settings": {"max_new_tokens": 8}},
        "trainer": {"steps": 2, "prompts_per_step": 4, "lr": 1e-3, "output_dir": str(tmp_path / "run"),
                    "progress": False, "memory_estimate": False},
    }  # fmt: skip
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return RLConfig.from_dict(base)


def _two_sequences(trainer: RLTrainer, masks=((1, 0, 1), (1,))) -> list[Trajectory]:
    tok = trainer.tokenizer
    out = []
    for g, (text, mask) in enumerate(zip(("<answer>47", "7"), masks, strict=True)):
        ids = tok.encode(text, add_special_tokens=False)[: len(mask)]
        out.append(Trajectory(prompt=f"next {g}:", prompt_ids=tok.encode(f"next {g}:"), group=0, response_ids=ids,
                              loss_mask=list(mask)))  # fmt: skip
    return out


# ---- acceptance: the assembled loss equals a hand-computed value ----------------------------------------------
def test_grpo_loss_of_a_two_sequence_batch_is_the_hand_value(tmp_path):
    trainer = RLTrainer(_config(tmp_path, algorithm={"kl_coef": 0.1}))
    trajs = _two_sequences(trainer)  # 2 policy tokens + 1 tool token, and 1 policy token
    prep = trainer.prepare(trajs, [1.0, 0.0], ["next", "next"])
    rows = torch.arange(2)
    loss, stats = trainer.micro_loss(prep, rows, trainer.totals(prep, rows))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO: (r − mean) / (std + eps), std of [1, 0] = √½
    # first epoch: ratio 1, loss −A per policy token; token-mean over the 3 policy tokens; KL(π‖π_ref) = 0
    assert loss.item() == pytest.approx((-2 * a + a) / 3, rel=1e-5)
    assert stats["ratio_max_dev"] < 1e-5 and stats["clip_frac"] == 0.0


def test_drgrpo_loss_of_a_two_sequence_batch_is_the_hand_value(tmp_path):
    trainer = RLTrainer(_config(tmp_path, algorithm={"estimator": "drgrpo", "norm_length": 8}))
    prep = trainer.prepare(_two_sequences(trainer), [1.0, 0.0], ["next", "next"])
    rows = torch.arange(2)
    loss, _ = trainer.micro_loss(prep, rows, trainer.totals(prep, rows))
    # seq-mean-token-sum-norm (verl): Σ_seq Σ_tok (−A) / n_seq / 8 with A = ±0.5
    assert loss.item() == pytest.approx(((-0.5 * 2) + (0.5 * 1)) / 2 / 8, rel=1e-5)


def test_mgs_domain_losses_sum_to_the_full_loss(tmp_path):
    trainer = RLTrainer(_config(tmp_path, algorithm={"kl_coef": 0.05}, term={"name": "tre_k", "params": {"coef": 0.01}},
                                surgery={"name": "mgs"}))  # fmt: skip
    trajs, domains, rewards = trainer.rollout()
    prep = trainer.prepare(trajs, rewards, domains)
    rows = torch.arange(len(trajs))
    totals = trainer.totals(prep, rows)
    full, _ = trainer.micro_loss(prep, rows, totals)
    parts = [trainer.micro_loss(prep, rows[prep.domain_of_row == d], totals)[0] for d in range(prep.n_domains)]
    assert prep.n_domains == 2
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-5, abs=1e-7)


def test_first_ppo_epoch_has_ratio_one_and_no_clipping(tmp_path):
    trainer = RLTrainer(_config(tmp_path, algorithm={"estimator": "gae", "ppo_epochs": 2, "kl_coef": 0.02},
                                trainer={"steps": 1, "micro_batch_size": 2}))  # fmt: skip
    m = trainer.train()[0]
    assert m["ratio_mean_epoch1"] == pytest.approx(1.0, abs=1e-5)
    assert m["clip_frac_epoch1"] == 0.0
    assert m["ratio_max_dev"] > 0  # the second epoch sees the updated policy


# ---- micro-batching and precision ----------------------------------------------------------------------------
def _grads_after_one_update(tmp_path, micro, term="none", estimator="gae"):
    trainer = RLTrainer(_config(tmp_path / f"{term}-{micro}", algorithm={"estimator": estimator, "kl_coef": 0.05},
                                term={"name": term}, trainer={"micro_batch_size": micro, "max_grad_norm": 1e9}))  # fmt: skip
    trajs, domains, rewards = trainer.rollout()
    prep = trainer.prepare(trajs, rewards, domains)
    trainer.optimizer.step = lambda *a, **k: None  # keep the weights: compare the gradients only
    trainer.update(prep, torch.arange(len(trajs)))
    return [p.grad.clone() if p.grad is not None else None for p in trainer.optimizer.param_groups[0]["params"]]


@pytest.mark.slow  # three trainer set-ups with full and micro-batched backward passes
@pytest.mark.parametrize(("term", "estimator"), [("none", "gae"), ("forking", "grpo"), ("tre_k", "drgrpo")])
def test_micro_batches_accumulate_to_the_full_batch_gradient(tmp_path, term, estimator):
    """The forking mask is chosen over the mini-batch, not per micro-batch; terms are token-weighted."""
    whole = _grads_after_one_update(tmp_path, None, term, estimator)
    micro = _grads_after_one_update(tmp_path, 2, term, estimator)
    assert len(whole) == len(micro)
    for a, b in zip(whole, micro, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_log_probs_match_the_full_softmax():
    logits = torch.randn(3, 5, 17, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    tokens = torch.randint(0, 17, (3, 5), generator=torch.Generator().manual_seed(1))
    logp, ent = chunked_log_probs(logits, tokens, temperature=0.8, chunk=4, with_entropy=True)
    torch.testing.assert_close(logp, token_log_probs(logits, tokens, temperature=0.8))
    full = torch.log_softmax(logits.float() / 0.8, -1)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1))


def test_bf16_weights_train_against_fp32_masters(tmp_path):
    trainer = RLTrainer(_config(tmp_path, policy={"dtype": "bfloat16"}, trainer={"steps": 1}))
    before = [p.detach().clone() for p in trainer.unwrapped.policy.parameters()]
    trainer.train()
    params = list(trainer.unwrapped.policy.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert trainer.master is not None and all(m.dtype == torch.float32 for m in trainer.master.master)
    state = trainer.optimizer.state_dict()["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    for p, m in zip(trainer.master.params, trainer.master.master, strict=True):
        assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_critic_is_separate_from_the_policy_trunk_by_default(tmp_path):
    separate = RLTrainer(_config(tmp_path / "a", algorithm={"estimator": "gae"})).unwrapped
    policy_ids = {id(p) for p in separate.policy.parameters()}
    assert separate.critic is not None and separate.value_head is None
    assert not policy_ids & {id(p) for p in separate.critic.parameters()}
    shared = RLTrainer(_config(tmp_path / "b", algorithm={"estimator": "gae"}, policy={"critic": "shared"})).unwrapped
    assert shared.critic is None and shared.value_head is not None


# ---- schedules, filtering, sharding, chat template, memory -----------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_warms_up_then_decays(tmp_path, schedule):
    trainer = RLTrainer(_config(tmp_path, trainer={"steps": 10, "lr_warmup_steps": 2, "lr_schedule": schedule,
                                                   "min_lr_ratio": 0.1}))  # fmt: skip
    f = [trainer._lr_factor(u) for u in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False)) and f[-1] > 0.1
    assert trainer._lr_factor(10) == pytest.approx(0.1)


def test_zero_variance_groups_are_filtered(tmp_path):
    trainer = RLTrainer(_config(tmp_path, reward={"name": "format", "params": {"pattern": "^$|.*"}},  # always 1
                                algorithm={"filter_zero_variance_groups": True}, trainer={"steps": 1}))  # fmt: skip
    m = trainer.train()[0]
    assert m["filtered_groups"] == 4 and m["reward_std"] == 0.0 and "loss" not in m


def test_ranks_draw_disjoint_shards_of_one_global_batch(tmp_path):
    trainer = RLTrainer(_config(tmp_path))
    shards = []
    for rank in range(3):
        trainer.rank, trainer.world, trainer.rng = rank, 3, random.Random(0)
        shards.append(trainer.sample_examples())
    trainer.rank, trainer.world, trainer.rng = 0, 1, random.Random(0)
    whole = trainer.task.sample(12, random.Random(0))
    assert [len(s) for s in shards] == [4, 4, 4]
    assert sorted(id(e) for s in shards for e in s) == sorted(id(e) for e in whole)


def test_chat_template_wraps_prompts():
    tok = build_char_tokenizer()
    assert encode_prompt(tok, "next 1:") == tok.encode("next 1:", add_special_tokens=True)
    from embedkit.errors import EmbedkitError

    with pytest.raises(EmbedkitError, match="no chat template"):
        encode_prompt(tok, "next 1:", chat_template=True)
    tok.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}answer:"
    assert tok.decode(encode_prompt(tok, "next 1:", chat_template=True)) == "user: next 1:\nanswer:"
    from agents.rl.tasks import Example
    from agents.rl.warmup import demonstration_tokens

    ids, mask = demonstration_tokens(tok, Example("next 1:", "2", demonstration="<answer>2</answer>"), True)
    prompt = encode_prompt(tok, "next 1:", chat_template=True)
    assert ids[: len(prompt)] == prompt and mask[: len(prompt)] == [0] * len(prompt)


def test_memory_estimate_is_printed_and_scales_with_the_model(tmp_path, capsys):
    RLTrainer(_config(tmp_path, trainer={"memory_estimate": True}))
    assert "estimated memory per process" in capsys.readouterr().out
    tok = build_char_tokenizer()
    config = _config(tmp_path, algorithm={"kl_coef": 0.1}, policy={"dtype": "bfloat16"})
    small = estimate_memory(build_tiny_causal_lm(tok, n_embd=32), config)
    large = estimate_memory(build_tiny_causal_lm(tok, n_embd=128), config)
    assert large["weights"] > small["weights"] > 0 and large["total"] > small["total"]
    assert small["optimizer"] == pytest.approx(small["weights"] / 2 * 12)  # fp32 Adam m, v + fp32 masters


def test_registry_names_are_checked_by_the_config(tmp_path):
    with pytest.raises(DataFormatError, match="unknown policy-loss term 'tre_q'"):
        _config(tmp_path, term={"name": "tre_q"})
    with pytest.raises(DataFormatError, match="unknown reward 'bleu'"):
        _config(tmp_path, reward={"name": "bleu"})
    with pytest.raises(DataFormatError, match="kl_estimator"):
        _config(tmp_path, algorithm={"kl_estimator": "k9"})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(_config(tmp_path).to_yaml())
    config = RLConfig.from_yaml(yaml_file, overrides={"algorithm.estimator": "drgrpo", "trainer.steps": 5})
    assert config.algorithm.estimator == "drgrpo" and config.trainer.steps == 5


# ---- resume ------------------------------------------------------------------------------------------------
def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]  # fmt: skip


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    sections = dict(algorithm={"estimator": "gae", "kl_coef": 0.05, "mini_batches": 2},
                    warmup={"steps": 2, "batch_size": 8}, policy={"gradient_checkpointing": True},
                    trainer={"steps": 3, "lr_schedule": "cosine", "lr_warmup_steps": 1})  # fmt: skip
    straight = RLTrainer(_config(tmp_path / "a", **sections))
    straight.train()
    RLTrainer(_config(tmp_path / "b", **sections)).train(stop_after=2)  # interrupted after step 2
    resumed = RLTrainer(_config(tmp_path / "b", **sections))
    assert resumed.start_step == 2 and resumed.unwrapped.policy.is_gradient_checkpointing
    resumed.train()
    assert _records(tmp_path / "a" / "run") == _records(tmp_path / "b" / "run")
    for name in ("policy", "critic"):
        a = getattr(straight.unwrapped, name).state_dict()
        b = getattr(resumed.unwrapped, name).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}.{key}")


# ---- OpenAI-compatible rollout server ------------------------------------------------------------------------
def _policy_server(tok, model):
    """A small OpenAI-compatible completions server over an HF model (greedy), with SGLang's reload API."""
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM

    app = FastAPI()
    app.state.model, app.state.reloads, app.state.requests = model.eval(), [], []

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:
        app.state.requests.append(body)
        ids = torch.tensor([body["prompt"]])
        with torch.no_grad():
            out = app.state.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=body["max_tokens"], pad_token_id=tok.pad_token_id,
                                           eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()  # fmt: skip
        eos = tok.eos_token_id in out
        out = out[: out.index(tok.eos_token_id)] if eos else out
        text = tok.decode(out, skip_special_tokens=True)
        hits = [(text.find(s) + len(s), s) for s in body.get("stop") or [] if s in text]
        if hits:
            text = text[: min(hits)[0]]
        return {"choices": [{"text": text, "finish_reason": "stop" if hits or eos else "length", "index": 0}]}

    @app.post("/update_weights_from_disk")
    def reload(body: dict) -> dict:
        app.state.model = AutoModelForCausalLM.from_pretrained(body["model_path"]).eval()
        app.state.reloads.append(body["model_path"])
        return {"success": True}

    return app


@pytest.mark.slow
def test_openai_rollout_backend_trains_and_pushes_weights(tmp_path):
    from tests.helpers import running_server

    tok = build_char_tokenizer()
    app = _policy_server(tok, build_tiny_causal_lm(tok, seed=5))  # not the policy: the first sync replaces it
    with running_server(app) as url:
        config = _config(tmp_path, rollout={"backend": "openai", "group_size": 2,
                                            "server": {"base_url": url + "/v1", "concurrency": 2},
                                            "settings": {"max_new_tokens": 6, "temperature": 0.0}},
                         trainer={"steps": 2, "prompts_per_step": 2})  # fmt: skip
        trainer = RLTrainer(config)
        history = trainer.train()
    assert [m["step"] for m in history] == [1, 2]
    assert len(app.state.reloads) == 3  # the initial policy, then after each update
    assert len(app.state.requests) >= 8 and all(isinstance(r["prompt"], list) for r in app.state.requests)
    served = app.state.model.state_dict()
    for key, value in trainer.unwrapped.policy.state_dict().items():
        torch.testing.assert_close(served[key], value)
