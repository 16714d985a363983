"""The trainer's entropy-style terms (TRE-K, TRE-P, entropy bonus, forking): the sampling distribution's entropy
(logits / temperature), aggregated with the policy loss's `loss_agg_mode`, and no fp32 copy of the [N, T, V]
logits, on the real trainer, through the CLI and against verl's own actor loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents.rl.config import RLConfig
from agents.rl.losses import chunked_log_probs
from agents.rl.regularizers import POLICY_TERMS, tre_k_entropy, tre_p_entropy
from agents.rl.rollout import Trajectory
from agents.rl.trainer import RLTrainer
from tests.test_index_integrity import assert_user_error, embedkit

torch.set_num_threads(2)
T = 0.7


def _config(tmp_path: Path, term: dict, agg: str) -> RLConfig:
    return RLConfig.from_dict({
        "task": {"name": "digit_map", "params": {"domains": ["next"]}},
        "rollout": {"group_size": 2, "settings": {"max_new_tokens": 8, "temperature": T}},
        "algorithm": {"loss_agg": agg, "norm_length": 8},
        "term": term,
        "trainer": {"steps": 1, "prompts_per_step": 2, "output_dir": str(tmp_path / "run"), "progress": False,
                    "memory_estimate": False},
    })  # fmt: skip


def _trainer(tmp_path: Path, term: dict, agg: str) -> RLTrainer:
    trainer = RLTrainer(_config(tmp_path, term, agg))
    with torch.no_grad():  # a random-init model is near uniform; sharper logits make temperature matter
        trainer.unwrapped.policy.get_output_embeddings().weight.mul_(2.0)
    return trainer


def _sequences(trainer: RLTrainer) -> list[Trajectory]:
    """Responses of 1, 3 and 6 policy tokens (one with a tool token), so token- and sequence-means differ."""
    tok = trainer.tokenizer
    out = []
    for g, (text, mask) in enumerate([("7", (1,)), ("4321", (1, 0, 1, 1)), ("987654", (1, 1, 1, 1, 1, 1))]):
        ids = tok.encode(text, add_special_tokens=False)[: len(mask)]
        out.append(Trajectory(prompt=f"next {g}:", prompt_ids=tok.encode(f"next {g}:"), group=g % 2,
                              response_ids=ids, loss_mask=list(mask)))  # fmt: skip
    return out


def _tre_by_hand(logits: torch.Tensor, k: int) -> torch.Tensor:
    """TRE-K from its definition on fp32 logits: entropy of softmax over the top K, times log|V| / log K."""
    top = torch.topk(logits.double(), k, -1).values
    p = torch.softmax(top, -1)
    return -(p * p.log()).sum(-1) * math.log(logits.shape[-1]) / math.log(k)


def _seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    per_seq = [(v * m).sum() / m.sum() for v, m in zip(values, mask, strict=True) if m.sum() > 0]
    return float(sum(per_seq) / len(per_seq))


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_tre_term_is_the_sampling_distributions_entropy_aggregated_like_the_policy_loss(tmp_path, agg):
    trainer = _trainer(tmp_path, {"name": "tre_k", "params": {"coef": 0.5, "k": 2}}, agg)
    prep = trainer.prepare(_sequences(trainer), [1.0, 0.0, 0.5], ["next"] * 3)
    rows = torch.arange(3)
    loss, stats = trainer.micro_loss(prep, rows, trainer.totals(prep, rows))
    with torch.no_grad():
        _, _, _, logits, t = trainer._forward(prep.batch, rows, with_logits=True)
    mask = prep.mask[:, :t]
    scaled = _tre_by_hand(logits / T, 2)
    if agg == "seq-mean-token-mean":
        expected = _seq_mean_token_mean(scaled, mask)
    else:  # Σ_seq Σ_tok H / n_seq / norm_length
        expected = float((scaled * mask).sum() / 3 / 8)
    assert stats["tre_entropy"] == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(stats["pg_loss"] - 0.5 * expected, rel=1e-5, abs=1e-7)
    # the old reading (raw logits, token-mean) is a different number on this batch
    raw_token_mean = float((_tre_by_hand(logits, 2) * mask).sum() / mask.sum())
    assert abs(raw_token_mean - expected) > 0.05 * abs(expected)


@pytest.mark.parametrize("term", [{"name": "tre_p", "params": {"coef": 0.3, "p": 0.9}},
                                  {"name": "entropy", "params": {"coef": 0.3}}])  # fmt: skip
def test_micro_batch_terms_add_up_to_the_mini_batch_term(tmp_path, term):
    """Each micro-batch's term uses the mini-batch's denominators (sequences under seq-mean)."""
    trainer = _trainer(tmp_path, term, "seq-mean-token-mean")
    prep = trainer.prepare(_sequences(trainer), [1.0, 0.0, 0.5], ["next"] * 3)
    rows = torch.arange(3)
    totals = trainer.totals(prep, rows)
    whole, whole_stats = trainer.micro_loss(prep, rows, totals)
    parts = [trainer.micro_loss(prep, r, totals) for r in (rows[:1], rows[1:])]
    assert sum(p[0].item() for p in parts) == pytest.approx(whole.item(), rel=1e-5, abs=1e-7)
    metric = next(k for k in whole_stats if k in ("tre_entropy", "bonus_entropy"))
    assert sum(p[1][metric] for p in parts) == pytest.approx(whole_stats[metric], rel=1e-5)


# ---- memory: no fp32 copy of the whole logits ---------------------------------------------------------------
class LargestFloat32(TorchDispatchMode):
    """The largest fp32 tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32:
                self.largest = max(self.largest, tensor.numel())
        return out


class SavedFloat32:
    """Total fp32 elements autograd keeps for the backward pass."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.float32:
            self.total += tensor.numel()
        return tensor


N, L, V, CHUNK = 2, 32, 4096, 8  # one slice is 1/8 of the logits; TRE-P's top-256 is 1/16


@pytest.mark.parametrize(("name", "params"), [("tre_k", {"k": 2}), ("tre_k", {"k": 1}), ("tre_p", {"p": 0.9}),
                                              ("entropy", {}), ("forking", {})])  # fmt: skip
def test_terms_make_no_fp32_copy_of_bf16_logits(name, params):
    logits = (torch.randn(N, L, V, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    logits.requires_grad_(True)
    mask = torch.ones(N, L)
    largest, saved = LargestFloat32(), SavedFloat32()
    with largest, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda x: x):
        out = POLICY_TERMS.get(name)(logits, mask, temperature=T, chunk=CHUNK, **params)
        if out.loss.requires_grad:
            out.loss.backward()
    assert largest.largest <= CHUNK * V, (largest.largest, N * L * V)
    assert saved.total < N * L * V / 2, (saved.total, N * L * V)
    if name != "forking":
        assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_chunked_log_probs_keep_no_fp32_logits_for_backward():
    logits = torch.randn(N, L, V, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, V, (N, L), generator=torch.Generator().manual_seed(2))
    largest, saved = LargestFloat32(), SavedFloat32()
    with largest, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda x: x):
        logp, ent = chunked_log_probs(logits, tokens, temperature=T, chunk=CHUNK, with_entropy=True)
        (logp.sum() + ent.sum()).backward()
    assert largest.largest <= CHUNK * V and saved.total < N * L * V / 2
    full = torch.log_softmax(logits.detach().float() / T, -1)
    torch.testing.assert_close(logp.detach(), full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(ent.detach(), -(full.exp() * full).sum(-1))


def test_sliced_entropies_equal_the_whole_tensor_formulas():
    logits = torch.randn(3, 7, 300, generator=torch.Generator().manual_seed(4)) * 2
    torch.testing.assert_close(tre_k_entropy(logits, 3, temperature=T, chunk=4), _tre_by_hand(logits / T, 3).float())
    torch.testing.assert_close(tre_k_entropy(logits, 1, temperature=T, chunk=4),
                               torch.logsumexp(logits / T, -1) - (logits / T).max(-1).values)  # fmt: skip
    torch.testing.assert_close(tre_p_entropy(logits, 0.9, temperature=T, chunk=4), tre_p_entropy(logits / T, 0.9))


# ---- the CLI ---------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a short supervised warm-up and one RL step in a subprocess
def test_cli_tre_term_logs_the_entropy_at_the_rollout_temperature(tmp_path):
    """With K = |V|, TRE-K is the Shannon entropy: the logged `tre_entropy` equals the logged `entropy` of the
    rollout distribution (softmax(logits / T)) when the term reads the same tokens with the same weights."""
    out = tmp_path / "run"
    result = embedkit("rl", "train", "--config", "configs/rl_tre_toy.yaml", "--output-dir", out, "-q",
                      "--set", "warmup.steps=30", "--set", f"rollout.settings.temperature={T}",
                      "--set", "term.params.k=100000", "--set", "algorithm.mini_batches=1",
                      "--set", "algorithm.kl_coef=0", "--set", "trainer.steps=1",
                      "--set", "trainer.prompts_per_step=4", "--set", "rollout.group_size=2", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["tre_entropy"] == pytest.approx(metrics["entropy"], rel=1e-4)


@pytest.mark.slow  # two short CLI runs
def test_cli_refuses_what_the_trainer_sets_itself_and_an_empty_slice(tmp_path):
    """`term.params` cannot shadow the temperature, slice size or aggregation the trainer passes (they were
    silently ignored), and `trainer.logprob_chunk: 0` is a user error, not a traceback."""
    quick = ["--set", "warmup.steps=0", "--set", "trainer.steps=1", "--set", "trainer.prompts_per_step=2",
             "--set", "rollout.group_size=2", "-q"]  # fmt: skip
    shadow = embedkit("rl", "train", "--config", "configs/rl_tre_toy.yaml", "--output-dir", tmp_path / "a",
                      "--set", "term.params.temperature=0.5", *quick)  # fmt: skip
    assert_user_error(shadow, "term.params cannot set temperature", "rollout.settings.temperature")
    empty = embedkit("rl", "train", "--config", "configs/rl_tre_toy.yaml", "--output-dir", tmp_path / "b",
                     "--set", "trainer.logprob_chunk=0", *quick)  # fmt: skip
    assert_user_error(empty, "trainer.logprob_chunk) must be >= 1")
