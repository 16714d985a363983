"""The RL training loop: rollout → reward → advantages → clipped policy loss (+ KL, terms, critic) →
gradient surgery → step. One loop for every combination the config picks.

    from agents.rl.config import RLConfig
    from agents.rl.trainer import RLTrainer
    trainer = RLTrainer(RLConfig.from_yaml("configs/rl_grpo_toy.yaml"))
    history = trainer.train()          # list of per-step metric dicts (also in <output_dir>/metrics.jsonl)
"""

from __future__ import annotations

import copy
import math
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from agents.rl.aggregation import aggregate, masked_mean
from agents.rl.config import RLConfig
from agents.rl.losses import full_entropy, kl_penalty, ppo_clip_loss, token_log_probs, value_loss
from agents.rl.metrics import MetricsLogger
from agents.rl.regularizers import POLICY_TERMS
from agents.rl.rewards import RewardBatch, RewardFn, build_reward
from agents.rl.rollout import ROLLOUT_STRATEGIES, RolloutEngine, Tool, Trajectory, gather_response, pack
from agents.rl.surgery import GRADIENT_SURGERY
from agents.rl.tasks import TASKS, Task, make_index_tool
from agents.rl.warmup import sft_warmup
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, atomic_write

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


class ActorCritic(nn.Module):
    """The policy LM plus an optional scalar value head on its last hidden state (PPO/GAE)."""

    def __init__(self, policy: nn.Module, with_value_head: bool) -> None:
        super().__init__()
        self.policy = policy
        hidden = policy.config.hidden_size if hasattr(policy.config, "hidden_size") else policy.config.n_embd
        self.value_head = nn.Linear(hidden, 1) if with_value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                          output_hidden_states=self.value_head is not None)  # fmt: skip
        values = None
        if self.value_head is not None:
            values = self.value_head(out.hidden_states[-1].float()).squeeze(-1)
        return out.logits, values


def load_policy(config: RLConfig) -> tuple[nn.Module, Any]:
    """The policy model and tokenizer named by `config.policy` (a toy model or any HF causal LM)."""
    p = config.policy
    if p.model.startswith("toy:"):
        from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm

        tokenizer = build_char_tokenizer()
        model = build_tiny_causal_lm(tokenizer, n_layer=p.toy_layers, n_embd=p.toy_width, n_head=p.toy_heads,
                                     seed=config.trainer.seed)  # fmt: skip
        return model, tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(p.tokenizer or p.model)
        model = AutoModelForCausalLM.from_pretrained(p.model, dtype=getattr(torch, p.dtype))
    except OSError as error:
        raise EmbedkitError(f"cannot load policy '{p.model}': {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if p.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


class RLTrainer:
    """Builds every piece from an `RLConfig`; any piece can be passed in instead (model, task, reward…)."""

    def __init__(self, config: RLConfig, *, model: nn.Module | None = None, tokenizer: Any = None,
                 task: Task | None = None, reward: RewardFn | None = None, tool: Tool | None = None) -> None:  # fmt: skip
        from accelerate import Accelerator

        self.config = config
        tc = config.trainer
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        self.accelerator = Accelerator(mixed_precision=tc.mixed_precision)
        torch.manual_seed(tc.seed)
        self.rng = random.Random(tc.seed)
        self.output_dir = Path(tc.output_dir)
        self.task = task or self._build_task()
        self.tool = tool or self._build_tool() or self.task.tool
        self.reward_fn = reward or self._build_reward()
        self.metric_rewards = {name: build_reward(name) for name in config.metric_rewards}
        if model is None:
            model, tokenizer = load_policy(config)
        elif tokenizer is None:
            raise EmbedkitError("pass the tokenizer together with the model")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.start_step = 0
        checkpoint = self.latest_checkpoint() if tc.resume else None
        if checkpoint is not None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(checkpoint / "policy")
        self.use_critic = config.algorithm.estimator in ("gae", "ppo")
        self.module = ActorCritic(model, self.use_critic)
        self.warmup_losses: list[float] = []
        model.to(self.accelerator.device)
        if checkpoint is None and config.warmup.steps > 0:
            self.warmup_losses = sft_warmup(model, tokenizer, self.task.examples, steps=config.warmup.steps,
                                            lr=config.warmup.lr, batch_size=config.warmup.batch_size, seed=tc.seed)  # fmt: skip
        self.reference = None
        if config.algorithm.kl_coef > 0:  # the reference is the policy as RL starts (after warm-up)
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
            if checkpoint is not None and (checkpoint / "reference").exists():
                from transformers import AutoModelForCausalLM

                self.reference = AutoModelForCausalLM.from_pretrained(checkpoint / "reference").eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        warm = max(0, tc.lr_warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda update: min(1.0, (update + 1) / warm) if warm else 1.0)
        if checkpoint is not None:
            self._load_state(checkpoint)
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        if self.reference is not None:
            self.reference = self.reference.to(self.accelerator.device)
        self.engine = RolloutEngine(self.unwrapped.policy, tokenizer, config.rollout.settings, self.tool,
                                    seed=tc.seed + self.start_step)  # fmt: skip
        self.rollout_fn = ROLLOUT_STRATEGIES.get(config.rollout.strategy)
        self.estimator = ADVANTAGE_ESTIMATORS.get(config.algorithm.estimator)
        self.term = POLICY_TERMS.get(config.term.name)
        self.surgery = GRADIENT_SURGERY.get(config.surgery.name)
        self.logger = MetricsLogger(self.output_dir) if self.accelerator.is_main_process else None
        if self.logger is not None and self.start_step:
            self.logger.truncate(self.start_step)

    # -- construction helpers ------------------------------------------------------------------------------
    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.module)

    def _build_task(self) -> Task:
        try:
            return TASKS.get(self.config.task.name)(**self.config.task.params)
        except TypeError as error:
            raise EmbedkitError(f"task '{self.config.task.name}': bad params: {error}") from None

    def _build_tool(self) -> Tool | None:
        t = self.config.tool
        if t.kind == "none":
            return None
        if t.kind == "index":
            if not t.path:
                raise EmbedkitError("tool.kind index needs tool.path (an embedkit index folder)")
            return make_index_tool(t.path, t.k, t.max_chars)
        raise EmbedkitError(f"unknown tool kind '{t.kind}'; choose none or index")

    def _build_reward(self) -> RewardFn:
        try:
            return build_reward(self.config.reward.name, **self.config.reward.params)
        except TypeError as error:
            raise EmbedkitError(f"reward '{self.config.reward.name}': bad params: {error}") from None

    # -- checkpoints --------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        folder = self.output_dir / "checkpoints"
        if not folder.is_dir():
            return None
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
        return max(found)[1] if found else None

    def save_checkpoint(self, step: int) -> Path:
        """policy/ (save_pretrained + tokenizer), reference/, trainer_state.pt; written atomically."""
        target = self.output_dir / "checkpoints" / f"step-{step}"
        if self.accelerator.is_main_process:
            with atomic_directory(target, overwrite=True) as tmp:
                self.unwrapped.policy.save_pretrained(tmp / "policy")
                self.tokenizer.save_pretrained(tmp / "policy")
                if self.reference is not None:
                    self.reference.save_pretrained(tmp / "reference")
                state = {
                    "step": step,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "value_head": None if self.unwrapped.value_head is None else self.unwrapped.value_head.state_dict(),
                    "python_rng": self.rng.getstate(),
                    "engine_rng": self.engine.rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                }
                torch.save(state, tmp / "trainer_state.pt")
                with atomic_write(tmp / "config.yaml") as handle:
                    handle.write(self.config.to_yaml())
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()
        return target

    def _prune_checkpoints(self) -> None:
        keep = self.config.trainer.keep_checkpoints
        folder = self.output_dir / "checkpoints"
        found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
        for _, path in found[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)

    def _load_state(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state["value_head"] is not None and self.module.value_head is not None:
            self.module.value_head.load_state_dict(state["value_head"])
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        self._engine_rng_state = state["engine_rng"]
        self.start_step = int(state["step"])

    # -- training -----------------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """Run until `trainer.steps`; returns the metrics of the steps run now."""
        tc = self.config.trainer
        if getattr(self, "_engine_rng_state", None) is not None:
            self.engine.rng.setstate(self._engine_rng_state)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.output_dir / "config.yaml") as handle:
                handle.write(self.config.to_yaml())
        from tqdm.auto import tqdm

        history = []
        bar = tqdm(range(self.start_step, tc.steps), initial=self.start_step, total=tc.steps, desc="rl",
                   disable=not (tc.progress and self.accelerator.is_main_process))  # fmt: skip
        for step in bar:
            metrics = self.step(step + 1)
            history.append(metrics)
            if self.logger is not None:
                self.logger.log(metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics.get('kl', 0.0):.4f}",
                            ent=f"{metrics['entropy']:.3f}", len=f"{metrics['response_length']:.1f}")  # fmt: skip
            if tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < tc.steps:
                self.save_checkpoint(step + 1)
        if tc.steps > self.start_step:
            self.save_checkpoint(tc.steps)
        return history

    def rollout(self) -> tuple[list[Trajectory], list[str], list[float]]:
        examples = self.task.sample(self.config.trainer.prompts_per_step, self.rng)
        self.engine.model = self.unwrapped.policy
        trajectories = self.rollout_fn(self.engine, [e.prompt for e in examples], self.config.rollout.group_size)
        domains = [examples[t.group].domain for t in trajectories]
        batch = RewardBatch(
            prompts=[t.prompt for t in trajectories],
            responses=[t.text for t in trajectories],
            ground_truths=[examples[t.group].ground_truth for t in trajectories],
            group_ids=[t.group for t in trajectories],
            metadata=[{"domain": d, "tool_calls": t.tool_calls} for t, d in zip(trajectories, domains, strict=True)],
        )
        rewards = [float(r) for r in self.reward_fn(batch)]
        self._metric_values = {f"metric/{name}": sum(fn(batch)) / len(trajectories)
                               for name, fn in self.metric_rewards.items()}  # fmt: skip
        return trajectories, domains, rewards

    def _forward(self, batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None):
        device = self.accelerator.device
        ids, attention, index = batch["input_ids"], batch["attention_mask"], batch["response_index"]
        if rows is not None:
            ids, attention, index = ids[rows], attention[rows], index[rows]
        logits, values = self.module(ids.to(device), attention.to(device))
        logits = gather_response(logits, index.to(device))
        if values is not None:
            values = gather_response(values, index.to(device))
        return logits, values

    def step(self, step: int) -> dict[str, Any]:
        cfg, alg = self.config, self.config.algorithm
        started = time.perf_counter()
        trajectories, domains, rewards = self.rollout()
        rollout_s = time.perf_counter() - started
        batch = pack(trajectories, self.pad_id)
        device = self.accelerator.device
        mask = batch["response_mask"].to(device)
        tokens = batch["response_ids"].to(device)
        with torch.no_grad():
            self.module.eval()
            logits, old_values = self._forward(batch)
            old_logp = token_log_probs(logits, tokens)
            entropy_now = float(masked_mean(full_entropy(logits), mask))
            ref_logp = None
            if self.reference is not None:
                ref_logits = self.reference(input_ids=batch["input_ids"].to(device),
                                            attention_mask=batch["attention_mask"].to(device)).logits  # fmt: skip
                ref_logp = token_log_probs(gather_response(ref_logits, batch["response_index"].to(device)), tokens)
            del logits
        self.module.train()
        reward_t = torch.tensor(rewards, dtype=torch.float32)
        advantages, returns = self.estimator(AdvantageInputs(
            rewards=reward_t, response_mask=batch["response_mask"], group_ids=[t.group for t in trajectories],
            values=None if old_values is None else old_values.detach().cpu(), gamma=alg.gamma, lam=alg.lam,
            eps=alg.eps, parents=[t.parent for t in trajectories],
            branch_positions=[t.branch_position for t in trajectories],
            lengths=[len(t.response_ids) for t in trajectories], length_alpha=alg.length_alpha,
        ))  # fmt: skip
        advantages, returns = advantages.to(device), returns.to(device)
        domain_names = sorted(set(domains))
        domain_of_row = torch.tensor([domain_names.index(d) for d in domains], device=device)
        agg = alg.aggregation()
        norm_length = alg.norm_length or cfg.rollout.settings.max_new_tokens
        stats: dict[str, list[float]] = {}
        n = len(trajectories)
        for _epoch in range(alg.ppo_epochs):
            order = torch.randperm(n)
            for chunk in torch.chunk(order, max(1, min(alg.mini_batches, n))):
                stats_chunk = self._update(batch, chunk.to(device), tokens, mask, old_logp, ref_logp, advantages,
                                           returns, old_values, domain_of_row, len(domain_names), agg, norm_length)  # fmt: skip
                for k, v in stats_chunk.items():
                    stats.setdefault(k, []).append(v)
        lengths = [sum(t.loss_mask) for t in trajectories]
        metrics: dict[str, Any] = {
            "step": step,
            "reward_mean": sum(rewards) / len(rewards),
            "reward_std": float(reward_t.std()) if len(rewards) > 1 else 0.0,
            "reward_max": max(rewards),
            "entropy": entropy_now,
            "response_length": sum(lengths) / len(lengths),
            "total_length": sum(len(t.response_ids) for t in trajectories) / len(trajectories),
            "finished_frac": sum(t.finished for t in trajectories) / len(trajectories),
            "tool_calls": sum(t.turns for t in trajectories) / len(trajectories),
            "advantage_abs": float(masked_mean(advantages.abs(), mask)),
            "rollout_s": rollout_s,
            "step_s": time.perf_counter() - started,
        }
        metrics.update(getattr(self, "_metric_values", {}))
        for name in domain_names:
            rs = [r for r, d in zip(rewards, domains, strict=True) if d == name]
            if len(domain_names) > 1:
                metrics[f"reward/{name}"] = sum(rs) / len(rs)
        for k, v in stats.items():
            metrics[k] = sum(v) / len(v)
        return metrics

    def _update(self, batch, rows, tokens, mask, old_logp, ref_logp, advantages, returns, old_values,
                domain_of_row, n_domains, agg, norm_length) -> dict[str, float]:  # fmt: skip
        alg = self.config.algorithm
        logits, values = self._forward(batch, rows.cpu())
        m, adv = mask[rows], advantages[rows]
        logp = token_log_probs(logits, tokens[rows])
        pg_tok, clipped = ppo_clip_loss(logp, old_logp[rows], adv, clip_low=alg.clip_low, clip_high=alg.clip_high,
                                        clip_ratio_c=alg.clip_ratio_c)  # fmt: skip
        term_out = self.term(logits, m, **self.config.term.params)
        pg_mask = term_out.pg_mask if term_out.pg_mask is not None else m
        total_tokens = float(pg_mask.sum().clamp_min(1))
        total_seqs = float(((pg_mask.sum(-1)) > 0).sum().clamp_min(1))
        kl_tok = kl_penalty(logp, ref_logp[rows], alg.kl_estimator) if ref_logp is not None else None
        v_tok = 0.5 * value_loss(values, old_values[rows], returns[rows], alg.value_clip) if values is not None else None
        term_tokens = float(m.sum().clamp_min(1))

        def loss_for(row_mask: torch.Tensor) -> torch.Tensor:
            """Loss of the rows in `row_mask` with whole-mini-batch denominators: domain losses add up."""
            rm = row_mask.unsqueeze(-1).to(m.dtype)
            loss = aggregate(pg_tok, pg_mask * rm, agg, norm_length=norm_length, total_tokens=total_tokens,
                             total_seqs=total_seqs)  # fmt: skip
            share = float((m * rm).sum()) / term_tokens
            if share > 0 and self.config.term.name != "none":
                loss = loss + self.term(logits, m * rm, **self.config.term.params).loss * share
            if kl_tok is not None:
                loss = loss + alg.kl_coef * aggregate(kl_tok, m * rm, "token-mean", total_tokens=term_tokens)
            if v_tok is not None:
                loss = loss + alg.value_coef * aggregate(v_tok, m * rm, "token-mean", total_tokens=term_tokens)
            return loss

        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer.zero_grad()
        row_domains = domain_of_row[rows]
        if self.config.surgery.name == "none" or n_domains < 2:
            loss = loss_for(torch.ones_like(row_domains, dtype=torch.bool))
            self.accelerator.backward(loss)
        else:
            per_domain = {}
            present = [d for d in range(n_domains) if bool((row_domains == d).any())]
            for i, d in enumerate(present):
                self.optimizer.zero_grad()
                self.accelerator.backward(loss_for(row_domains == d), retain_graph=i < len(present) - 1)
                per_domain[d] = [None if p.grad is None else p.grad.detach().clone() for p in params]
            combined = self.surgery(per_domain, self.rng)
            for p, g in zip(params, combined, strict=True):
                p.grad = g
            with torch.no_grad():
                loss = loss_for(torch.ones_like(row_domains, dtype=torch.bool))
        grad_norm = self.accelerator.clip_grad_norm_(params, self.config.trainer.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used
        self.optimizer.step()
        self.scheduler.step()
        out = {
            "loss": float(loss.detach()),
            "pg_loss": float(aggregate(pg_tok.detach(), pg_mask, agg, norm_length=norm_length)),
            "clip_frac": float(masked_mean(clipped, m)),
            "grad_norm": float(grad_norm) if grad_norm is not None and math.isfinite(float(grad_norm)) else float("nan"),
            "lr": lr,
        }
        if kl_tok is not None:
            out["kl"] = float(masked_mean(kl_tok.detach(), m))
        if v_tok is not None:
            out["value_loss"] = float(masked_mean(v_tok.detach(), m))
        out.update(term_out.metrics)
        return out


def train(config: RLConfig, **pieces: Any) -> list[dict]:
    """Build an `RLTrainer` from `config` (pieces override what the config would build) and train."""
    return RLTrainer(config, **pieces).train()
