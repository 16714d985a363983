"""The RL training loop: rollout → reward → advantages → clipped policy loss (+ KL, terms, critic) →
gradient surgery → step. One loop for every combination the config picks.

    from agents.rl.config import RLConfig
    from agents.rl.trainer import RLTrainer
    trainer = RLTrainer(RLConfig.from_yaml("configs/rl_grpo_toy.yaml"))
    history = trainer.train()          # list of per-step metric dicts (also in <output_dir>/metrics.jsonl)

Scale: every mini-batch is cut into micro-batches of `trainer.micro_batch_size` sequences whose gradients
accumulate (each micro-batch's loss uses the whole mini-batch's denominators, so the sum is the mini-batch
loss); log-probs, entropies and reference log-probs are computed in slices of `trainer.logprob_chunk`
positions (no fp32 [N, T, V] tensor); bf16/fp16 weights train against fp32 master weights and optimizer
state; under accelerate every rank seeds its own sampling and takes its own shard of the step's prompts.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from agents.rl.aggregation import aggregate, masked_mean
from agents.rl.config import RLConfig
from agents.rl.losses import chunked_log_probs, kl_penalty, ppo_clip, value_loss
from agents.rl.metrics import MetricsLogger
from agents.rl.regularizers import POLICY_TERMS
from agents.rl.reward_registry import RewardBatch, RewardFn, build_reward
from agents.rl.rollout import ROLLOUT_STRATEGIES, RolloutEngine, Tool, Trajectory, gather_response, pack
from agents.rl.surgery import GRADIENT_SURGERY
from agents.rl.tasks import TASKS, Task, make_index_tool
from agents.rl.warmup import sft_warmup
from embedkit.encoding.models import resolve_model
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, atomic_write, recover_children
from embedkit.torch_load import load_tensors

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"  # in every checkpoint folder: what marks a folder as one (atomic_directory)
RANK_SEED_STRIDE = 1_000_003  # keeps the ranks' seeds apart for any realistic base seed


def _hidden_size(config: Any) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise EmbedkitError("cannot find the hidden size of the policy model (for the value head)")


class ValueModel(nn.Module):
    """A critic: a transformer trunk with a scalar head (verl's critic is a separate model)."""

    def __init__(self, trunk: nn.Module, hidden: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)


class ActorCritic(nn.Module):
    """The policy LM plus, for PPO/GAE, a critic: a separate copy of the policy trunk with its own head
    (`critic="separate"`, the default) or a head on the policy's last hidden state (`critic="shared"`)."""

    def __init__(self, policy: nn.Module, critic: str | None) -> None:
        super().__init__()
        self.policy: Any = policy  # an HF causal LM (save_pretrained, generate, config)
        self.critic_kind = critic
        self.critic: ValueModel | None = None
        self.value_head: nn.Linear | None = None
        hidden = _hidden_size(policy.config)
        if critic == "separate":
            trunk = getattr(policy, "base_model", None)
            if not isinstance(trunk, nn.Module):
                raise EmbedkitError("a separate critic needs an HF model with a base_model trunk; use critic: shared")
            self.critic = ValueModel(copy.deepcopy(trunk), hidden)
        elif critic == "shared":
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                          output_hidden_states=self.value_head is not None)  # fmt: skip
        values = None
        if self.value_head is not None:
            values = self.value_head(out.hidden_states[-1].float()).squeeze(-1)
        elif self.critic is not None:
            values = self.critic(input_ids, attention_mask)
        return out.logits, values

    def critic_state(self) -> dict[str, torch.Tensor] | None:
        module = self.critic if self.critic is not None else self.value_head
        return None if module is None else module.state_dict()

    def load_critic_state(self, state: dict[str, torch.Tensor] | None) -> None:
        module = self.critic if self.critic is not None else self.value_head
        if module is not None and state is not None:
            module.load_state_dict(state)


class MasterWeights:
    """fp32 master copies of low-precision parameters: the optimizer steps the masters, the model gets
    their rounded values (bf16 weights never accumulate rounding error across updates)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.master = [nn.Parameter(p.detach().float().clone()) for p in params]

    def grads_to_master(self) -> None:
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.detach().float()
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        for p, m in zip(self.params, self.master, strict=True):
            p.copy_(m.to(p.dtype))

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.master]

    @torch.no_grad()
    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for m, saved in zip(self.master, state, strict=True):
            m.copy_(saved)
        self.master_to_model()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest `<output_dir>/checkpoints/step-N` folder, or None (what `trainer.resume` continues from)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    recover_children(folder)  # a save killed mid-swap leaves step-N.new-*/.old-* until a reader restores it
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


@contextlib.contextmanager
def checkpoint_fits(checkpoint: Path) -> Iterator[None]:
    """Report a checkpoint whose state does not fit this run (another model, optimizer, task or file layout)
    as an `EmbedkitError` naming it, instead of a traceback from deep inside `load_state_dict`."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise EmbedkitError(f"{checkpoint} does not fit this run ({type(error).__name__}: {detail}); resume with "
                            "the config it was saved with, or start fresh (--no-resume, trainer.resume=false)") from None


def prepare_policy(model: nn.Module, config: RLConfig) -> nn.Module:
    """Dtype and gradient checkpointing of the policy, applied the same way on a fresh start and on resume."""
    p = config.policy
    model = model.to(getattr(torch, p.dtype))
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if p.gradient_checkpointing and callable(enable):
        enable()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    return model


def load_policy(config: RLConfig, checkpoint: Path | None = None) -> tuple[nn.Module, Any]:
    """The policy model and tokenizer named by `config.policy` (a toy model or any HF causal LM), or the
    policy saved in `checkpoint`."""
    p = config.policy
    if p.model.startswith("toy:"):
        from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm

        tokenizer = build_char_tokenizer()
        model = build_tiny_causal_lm(tokenizer, n_layer=p.toy_layers, n_embd=p.toy_width, n_head=p.toy_heads,
                                     seed=config.trainer.seed)  # fmt: skip
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(p.tokenizer or p.model))
        except OSError as error:
            raise EmbedkitError(f"cannot load the tokenizer of '{p.tokenizer or p.model}': {error}") from None
        model = None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    if checkpoint is not None or model is None:
        from transformers import AutoModelForCausalLM

        source = checkpoint / "policy" if checkpoint is not None else resolve_model(p.model)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, p.dtype))
        except OSError as error:
            raise EmbedkitError(f"cannot load policy '{source}': {error}") from None
    return prepare_policy(model, config), tokenizer


def estimate_memory(model: nn.Module, config: RLConfig, *, seq_len: int | None = None) -> dict[str, float]:
    """A rough per-process estimate in GiB: weights, gradients, optimizer state (+ fp32 masters), reference,
    critic, activations of one micro-batch and one log-softmax slice. Meant to show before the first step
    that a model will not fit, not to be exact."""
    n = sum(p.numel() for p in model.parameters())
    width = torch.tensor([], dtype=getattr(torch, config.policy.dtype)).element_size()
    gib = 1024**3
    cfg = model.config
    hidden = _hidden_size(cfg)
    layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 1)))
    vocab = int(getattr(cfg, "vocab_size", 0))
    seq_len = seq_len or 512 + config.rollout.settings.max_new_tokens
    micro = config.trainer.micro_batch_size or max(
        1, config.trainer.prompts_per_step * config.rollout.group_size // max(1, config.algorithm.mini_batches))
    per_layer = 34 * seq_len * hidden * width / 2  # attention + MLP activations kept for backward (fp16 ≈ 34·s·h)
    kept_layers = 1 + (layers ** 0.5 if config.policy.gradient_checkpointing else layers)
    critic = config.algorithm.estimator in ("gae", "ppo") and config.policy.critic == "separate"
    low_precision = config.policy.dtype != "float32"
    out = {
        "weights": n * width / gib,
        "gradients": n * width / gib,
        "optimizer": n * 8 / gib + (n * 4 / gib if low_precision else 0.0),
        "reference": n * width / gib if config.algorithm.kl_coef > 0 else 0.0,
        "critic": 4 * n * width / gib if critic else 0.0,  # weights, grads, Adam state (≈ policy-sized)
        "activations": micro * per_layer * kept_layers / gib,
        "logprob_slice": config.trainer.logprob_chunk * vocab * 4 * 3 / gib,
    }
    out["total"] = sum(out.values())
    return out


@dataclass
class Prepared:
    """Everything one update needs about a rollout batch (tensors on the device)."""

    batch: dict[str, torch.Tensor]
    tokens: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor
    old_values: torch.Tensor | None
    domain_of_row: torch.Tensor
    n_domains: int
    entropy: float


class RLTrainer:
    """Builds every piece from an `RLConfig`; any piece can be passed in instead (model, task, reward…)."""

    def __init__(self, config: RLConfig, *, model: nn.Module | None = None, tokenizer: Any = None,
                 task: Task | None = None, reward: RewardFn | None = None, tool: Tool | None = None) -> None:  # fmt: skip
        from accelerate import Accelerator

        self.config = config
        if passed := sorted({"temperature", "chunk", "reduce"} & set(config.term.params)):
            raise EmbedkitError(f"term.params cannot set {', '.join(passed)}: the trainer passes them "
                                "(rollout.settings.temperature, trainer.logprob_chunk, algorithm.loss_agg)")  # fmt: skip
        tc = config.trainer
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        self.accelerator = Accelerator(mixed_precision=tc.mixed_precision)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.rank_seed = tc.seed + RANK_SEED_STRIDE * self.rank
        torch.manual_seed(self.rank_seed)
        self.rng = random.Random(tc.seed)  # shared by all ranks: they draw the same global batch and shard it
        self.output_dir = Path(tc.output_dir)
        self.task = task or self._build_task()
        self.tool = tool or self._build_tool() or self.task.tool
        self.reward_fn = reward or self._build_reward()
        self.metric_rewards = {name: build_reward(name) for name in config.metric_rewards}
        self.start_step = 0
        checkpoint = self.latest_checkpoint() if tc.resume else None
        if model is None:
            model, tokenizer = load_policy(config, checkpoint)
        elif tokenizer is None:
            raise EmbedkitError("pass the tokenizer together with the model")
        elif checkpoint is not None:
            model, _ = load_policy(config, checkpoint)
        else:
            model = prepare_policy(model, config)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        alg = config.algorithm
        self.use_critic = alg.estimator in ("gae", "ppo")
        self.temperature = config.rollout.settings.temperature if config.rollout.settings.temperature > 0 else 1.0
        model.to(self.accelerator.device)
        self.warmup_losses: list[float] = []
        if checkpoint is None and config.warmup.steps > 0:
            self.warmup_losses = sft_warmup(model, tokenizer, self.task.examples, steps=config.warmup.steps,
                                            lr=config.warmup.lr, batch_size=config.warmup.batch_size, seed=tc.seed,
                                            chat_template=config.rollout.settings.chat_template)  # fmt: skip
        self.module = ActorCritic(model, config.policy.critic if self.use_critic else None).to(self.accelerator.device)
        self.reference = None
        if alg.kl_coef > 0:  # the reference is the policy as RL starts (after warm-up)
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
            if checkpoint is not None and (checkpoint / "reference").exists():
                from transformers import AutoModelForCausalLM

                self.reference = AutoModelForCausalLM.from_pretrained(
                    checkpoint / "reference", dtype=getattr(torch, config.policy.dtype)).eval().requires_grad_(False)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.master = MasterWeights(params) if any(p.dtype != torch.float32 for p in params) else None
        opt_params = self.master.master if self.master is not None else params
        self.optimizer = torch.optim.AdamW(opt_params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.total_updates = max(1, tc.steps * alg.ppo_epochs * alg.mini_batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self._rng_states: dict[str, Any] | None = None
        self._rng_source = Path()  # the checkpoint the RNG states come from (for errors)
        if checkpoint is not None:
            self._load_state(checkpoint)
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        if self.reference is not None:
            self.reference = self.reference.to(self.accelerator.device)
        self.engine = self._build_engine()
        self.rollout_fn = ROLLOUT_STRATEGIES.get(config.rollout.strategy)
        self.estimator = ADVANTAGE_ESTIMATORS.get(alg.estimator)
        self.term = POLICY_TERMS.get(config.term.name)
        self.surgery = GRADIENT_SURGERY.get(config.surgery.name)
        self.logger = MetricsLogger(self.output_dir) if self.accelerator.is_main_process else None
        if self.logger is not None and self.start_step:
            self.logger.truncate(self.start_step)
        if tc.memory_estimate and self.accelerator.is_main_process and self.start_step < tc.steps:
            est = estimate_memory(self.unwrapped.policy, config)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in est.items() if k != "total")
            print(f"[embedkit rl] estimated memory per process: {est['total']:.2f} GiB ({parts})", flush=True)

    # -- construction helpers ------------------------------------------------------------------------------
    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.module)

    def _lr_factor(self, update: int) -> float:
        tc = self.config.trainer
        warm = max(0, tc.lr_warmup_steps)
        if warm and update < warm:
            return (update + 1) / warm
        if tc.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (update - warm) / max(1, self.total_updates - warm))
        decay = 1.0 - progress if tc.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * decay

    def _build_task(self) -> Task:
        try:
            return TASKS.get(self.config.task.name)(**self.config.task.params)
        except TypeError as error:
            raise EmbedkitError(f"task '{self.config.task.name}': bad params: {error}") from None

    def _build_tool(self) -> Tool | None:
        t = self.config.tool
        if t.kind == "none":
            return None
        if not t.path:
            raise EmbedkitError("tool.kind index needs tool.path (an embedkit index folder)")
        return make_index_tool(t.path, t.k, t.max_chars)

    def _build_reward(self) -> RewardFn:
        try:
            return build_reward(self.config.reward.name, **self.config.reward.params)
        except TypeError as error:
            raise EmbedkitError(f"reward '{self.config.reward.name}': bad params: {error}") from None

    def _build_engine(self) -> RolloutEngine:
        r = self.config.rollout
        if r.backend == "openai":
            from agents.rl.server_rollout import OpenAIRolloutEngine

            engine = OpenAIRolloutEngine(self.tokenizer, r.settings, self.tool, r.server, seed=self.rank_seed,
                                         sync_dir=r.server.sync_dir or self.output_dir / "served-policy")  # fmt: skip
            if self.accelerator.is_main_process and self.start_step < self.config.trainer.steps:
                engine.sync_weights(self.unwrapped.policy)  # the server must serve the policy being trained
            return engine
        return RolloutEngine(self.unwrapped.policy, self.tokenizer, r.settings, self.tool, seed=self.rank_seed)

    # -- checkpoints --------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.output_dir)

    def _rng_state(self) -> dict[str, Any]:
        return {
            "python": self.rng.getstate(),
            "engine": self.engine.rng.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self, step: int) -> Path:
        """policy/ (save_pretrained + tokenizer), reference/, trainer_state.pt (optimizer, scheduler, critic,
        fp32 masters, reward-model memory) and rank_<r>_rng.pt per rank; written atomically.

        The two `.pt` files hold tensors and plain data only (the RNG states are a tuple of ints and byte
        tensors), so resume reads them with `weights_only=True` and a crafted file cannot run code."""
        target = self.output_dir / "checkpoints" / f"step-{step}"
        rng_states: list[Any] = [None] * self.world
        if self.world > 1:
            import torch.distributed as dist

            dist.all_gather_object(rng_states, self._rng_state())
        else:
            rng_states = [self._rng_state()]
        if self.accelerator.is_main_process:
            with atomic_directory(target, overwrite=True, marker=STATE_FILE, what="RL checkpoint") as tmp:
                self.unwrapped.policy.save_pretrained(tmp / "policy")
                self.tokenizer.save_pretrained(tmp / "policy")
                reference: Any = self.reference
                if reference is not None:
                    reference.save_pretrained(tmp / "reference")
                reward_state = getattr(self.reward_fn, "state_dict", None)
                state = {
                    "step": step,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "critic": self.unwrapped.critic_state(),
                    "master": None if self.master is None else self.master.state_dict(),
                    "reward": reward_state() if callable(reward_state) else None,
                }
                torch.save(state, tmp / STATE_FILE)
                for rank, rng in enumerate(rng_states):
                    torch.save(rng, tmp / f"rank_{rank}_rng.pt")
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
        state = load_tensors(checkpoint / STATE_FILE)
        rng_file = checkpoint / f"rank_{self.rank}_rng.pt"
        with checkpoint_fits(checkpoint):
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.module.load_critic_state(state.get("critic"))
            if self.master is not None and state.get("master") is not None:
                self.master.load_state_dict(state["master"])
            load_reward = getattr(self.reward_fn, "load_state_dict", None)
            if state.get("reward") is not None and callable(load_reward):
                load_reward(state["reward"])
            self.start_step = int(state["step"])
        if rng_file.exists():
            self._rng_states = load_tensors(rng_file)
            self._rng_source = checkpoint

    def _restore_rng(self) -> None:
        s, self._rng_states = self._rng_states, None
        if s is None:
            return
        with checkpoint_fits(self._rng_source):
            self.rng.setstate(s["python"])
            self.engine.rng.setstate(s["engine"])
            torch.set_rng_state(s["torch"])
            if s.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(s["cuda"])

    # -- training -----------------------------------------------------------------------------------------
    def train(self, *, stop_after: int | None = None) -> list[dict]:
        """Run until `trainer.steps` (or stop, with a checkpoint, after step `stop_after`: a time-boxed job);
        returns the metrics of the steps run now."""
        tc = self.config.trainer
        last = tc.steps if stop_after is None else min(tc.steps, stop_after)
        self._restore_rng()
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.output_dir / "config.yaml") as handle:
                handle.write(self.config.to_yaml())
        from tqdm.auto import tqdm

        history = []
        bar = tqdm(range(self.start_step, last), initial=self.start_step, total=tc.steps, desc="rl",
                   disable=not (tc.progress and self.accelerator.is_main_process))  # fmt: skip
        for step in bar:
            metrics = self.step(step + 1)
            history.append(metrics)
            if self.logger is not None:
                self.logger.log(metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics.get('kl', 0.0):.4f}",
                            ent=f"{metrics['entropy']:.3f}", len=f"{metrics['response_length']:.1f}")  # fmt: skip
            if tc.save_every and (step + 1) % tc.save_every == 0 and step + 1 < last:
                self.save_checkpoint(step + 1)
        if last > self.start_step:
            self.save_checkpoint(last)
        return history

    def sample_examples(self) -> list:
        """This rank's shard of the step's prompts: all ranks draw the same global batch, rank r keeps r::world."""
        n = self.config.trainer.prompts_per_step
        examples = self.task.sample(n * self.world, self.rng)
        return examples[self.rank :: self.world]

    def rollout(self) -> tuple[list[Trajectory], list[str], list[float]]:
        examples = self.sample_examples()
        if isinstance(self.engine, RolloutEngine) and self.engine.model is not None:
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

    def _micro_batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        size = self.config.trainer.micro_batch_size
        if not size or size >= len(rows):
            return [rows]
        return list(torch.split(rows, size))

    def _forward(self, batch: dict[str, torch.Tensor], rows: torch.Tensor, *, with_entropy: bool = False,
                 with_logits: bool = False):  # fmt: skip
        """Log-probs (and entropy, values) of the rows' response tokens, trimmed to their own width."""
        device = self.accelerator.device
        rows_cpu = rows.cpu()
        width = int(batch["attention_mask"][rows_cpu].sum(-1).max())
        t_max = int(batch["valid"][rows_cpu].sum(-1).max().clamp_min(1))
        ids = batch["input_ids"][rows_cpu, :width].to(device)
        attention = batch["attention_mask"][rows_cpu, :width].to(device)
        index = batch["response_index"][rows_cpu, :t_max].to(device)
        tokens = batch["response_ids"][rows_cpu, :t_max].to(device)
        logits, values = self.module(ids, attention)
        logits = gather_response(logits, index)
        logp, entropy = chunked_log_probs(logits, tokens, temperature=self.temperature,
                                          chunk=self.config.trainer.logprob_chunk, with_entropy=with_entropy)  # fmt: skip
        if values is not None:
            values = gather_response(values, index)
        return logp, entropy, values, (logits if with_logits else None), t_max

    @torch.no_grad()
    def prepare(self, trajectories: list[Trajectory], rewards: list[float], domains: list[str]) -> Prepared:
        """Old log-probs, reference log-probs, values and advantages of a rollout batch (micro-batched)."""
        alg = self.config.algorithm
        batch = pack(trajectories, self.pad_id)
        device = self.accelerator.device
        n, t_all = batch["response_mask"].shape
        mask = batch["response_mask"].to(device)
        old_logp = torch.zeros(n, t_all, device=device)
        ref_logp = torch.zeros(n, t_all, device=device) if self.reference is not None else None
        old_values = torch.zeros(n, t_all, device=device) if self.use_critic else None
        entropy_sum = torch.zeros((), device=device)
        self.module.eval()
        for rows in self._micro_batches(torch.arange(n)):
            logp, ent, values, _, t = self._forward(batch, rows, with_entropy=True)
            old_logp[rows.to(device), :t] = logp
            entropy_sum += (ent * mask[rows.to(device), :t]).sum()
            if values is not None and old_values is not None:
                old_values[rows.to(device), :t] = values.float()
            if self.reference is not None and ref_logp is not None:
                r_cpu = rows.cpu()
                width = int(batch["attention_mask"][r_cpu].sum(-1).max())
                ref_logits = self.reference(input_ids=batch["input_ids"][r_cpu, :width].to(device),
                                            attention_mask=batch["attention_mask"][r_cpu, :width].to(device)).logits  # fmt: skip
                ref_logits = gather_response(ref_logits, batch["response_index"][r_cpu, :t].to(device))
                ref_logp[rows.to(device), :t], _ = chunked_log_probs(
                    ref_logits, batch["response_ids"][r_cpu, :t].to(device), temperature=self.temperature,
                    chunk=self.config.trainer.logprob_chunk)  # fmt: skip
        self.module.train()
        advantages, returns = self.estimator(AdvantageInputs(
            rewards=torch.tensor(rewards, dtype=torch.float32), response_mask=batch["response_mask"],
            group_ids=[t.group for t in trajectories],
            values=None if old_values is None else old_values.detach().cpu(), gamma=alg.gamma, lam=alg.lam,
            eps=alg.eps, parents=[t.parent for t in trajectories],
            branch_positions=[t.branch_position for t in trajectories],
            lengths=[len(t.response_ids) for t in trajectories], length_alpha=alg.length_alpha,
        ))  # fmt: skip
        names = sorted(set(domains))
        return Prepared(batch=batch, tokens=batch["response_ids"].to(device), mask=mask, old_logp=old_logp,
                        ref_logp=ref_logp, advantages=advantages.to(device), returns=returns.to(device),
                        old_values=old_values, domain_of_row=torch.tensor([names.index(d) for d in domains]),
                        n_domains=len(names), entropy=float(entropy_sum / mask.sum().clamp_min(1)))  # fmt: skip

    def micro_loss(self, prep: Prepared, rows: torch.Tensor, totals: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """The loss of `rows` with the mini-batch's denominators in `totals` (so micro-batch and domain losses
        add up to the mini-batch loss): policy gradient + KL + policy term + critic."""
        alg, cfg = self.config.algorithm, self.config
        need_logits = cfg.term.name != "none"
        logp, _, values, logits, t = self._forward(prep.batch, rows, with_logits=need_logits)
        dev_rows = rows.to(self.accelerator.device)
        m = prep.mask[dev_rows, :t]
        clip = ppo_clip(logp, prep.old_logp[dev_rows, :t], prep.advantages[dev_rows, :t], clip_low=alg.clip_low,
                        clip_high=alg.clip_high, clip_ratio_c=alg.clip_ratio_c)  # fmt: skip
        pg_mask = m
        stats: dict[str, float] = {}
        loss = logp.new_zeros(())
        share = float(m.sum()) / totals["tokens"]  # this micro-batch's share of the mini-batch's tokens
        agg = alg.aggregation()
        if need_logits:
            # the term's entropy is that of the sampling distribution (temperature), aggregated like the policy
            # loss over the mini-batch's denominators, so micro-batch terms add up (verl's entropy bonus)
            def reduce(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return aggregate(values, mask, agg, norm_length=totals["norm_length"], total_tokens=totals["tokens"],
                                 total_seqs=totals["seqs"])  # fmt: skip

            term_out = self.term(logits, m, **cfg.term.params, temperature=self.temperature,
                                 chunk=cfg.trainer.logprob_chunk, reduce=reduce)  # fmt: skip
            if term_out.pg_mask is not None:
                pg_mask = term_out.pg_mask
            loss = loss + term_out.loss
            stats.update(term_out.metrics)
        override = totals.get("pg_mask")
        if override is not None:  # the forking mask chosen over the whole mini-batch
            pg_mask = override[dev_rows, :t]
        loss = loss + aggregate(clip.loss, pg_mask, agg, norm_length=totals["norm_length"],
                                total_tokens=totals["pg_tokens"], total_seqs=totals["pg_seqs"])  # fmt: skip
        if prep.ref_logp is not None:
            kl = kl_penalty(logp, prep.ref_logp[dev_rows, :t], alg.kl_estimator)
            loss = loss + alg.kl_coef * aggregate(kl, m, "token-mean", total_tokens=totals["tokens"])
            stats["kl"] = float((kl.detach() * m).sum() / totals["tokens"])
        if values is not None and prep.old_values is not None:
            v = value_loss(values, prep.old_values[dev_rows, :t], prep.returns[dev_rows, :t], alg.value_clip)
            v_loss = 0.5 * aggregate(v, m, "token-mean", total_tokens=totals["tokens"])
            loss = loss + alg.value_coef * v_loss
            stats["value_loss"] = float(v_loss.detach())
        w = share
        stats["clip_frac"] = float(masked_mean(clip.clipped, m)) * w
        stats["clip_frac_lower"] = float(masked_mean(clip.clipped_lower, m)) * w
        stats["ratio_mean"] = float(masked_mean(clip.ratio.detach(), m)) * w
        stats["ratio_max_dev"] = float(((clip.ratio.detach() - 1).abs() * m).max())
        stats["pg_loss"] = float(aggregate(clip.loss.detach(), pg_mask, agg, norm_length=totals["norm_length"],
                                           total_tokens=totals["pg_tokens"], total_seqs=totals["pg_seqs"]))  # fmt: skip
        return loss, stats

    def totals(self, prep: Prepared, rows: torch.Tensor) -> dict[str, Any]:
        """Denominators of a mini-batch (the forking term's mask changes the policy-gradient ones)."""
        m = prep.mask[rows.to(self.accelerator.device)]
        norm_length = self.config.algorithm.norm_length or self.config.rollout.settings.max_new_tokens
        tokens = float(m.sum().clamp_min(1))
        seqs = float((m.sum(-1) > 0).sum().clamp_min(1))
        return {"tokens": tokens, "seqs": seqs, "pg_tokens": tokens, "pg_seqs": seqs,
                "norm_length": float(norm_length)}  # fmt: skip

    def _accumulate(self, prep: Prepared, rows: torch.Tensor, totals: dict[str, Any]) -> tuple[float, dict]:
        loss_total, stats = 0.0, {}  # type: float, dict[str, float]
        for micro in self._micro_batches(rows):
            loss, s = self.micro_loss(prep, micro, totals)
            self.accelerator.backward(loss)
            loss_total += float(loss.detach())
            for k, v in s.items():
                stats[k] = max(stats.get(k, v), v) if k == "ratio_max_dev" else stats.get(k, 0.0) + v
        return loss_total, stats

    def update(self, prep: Prepared, rows: torch.Tensor) -> dict[str, float]:
        """One optimizer step on the mini-batch `rows` (micro-batched, with gradient surgery across domains)."""
        totals = self.totals(prep, rows)
        if self.config.term.name == "forking":  # its mask decides the denominators: apply it on the mini-batch
            with torch.no_grad():
                _, ent, _, _, t = self._forward(prep.batch, rows, with_entropy=True)
                from agents.rl.regularizers import forking_mask

                dev_rows = rows.to(self.accelerator.device)
                m = prep.mask[dev_rows, :t]
                fm = forking_mask(ent, m, float(self.config.term.params.get("rho", 0.2)))
                totals["pg_tokens"] = float(fm.sum().clamp_min(1))
                totals["pg_seqs"] = float((fm.sum(-1) > 0).sum().clamp_min(1))
                full = torch.zeros_like(prep.mask)
                full[dev_rows, :t] = fm
                totals["pg_mask"] = full
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer.zero_grad()
        for p in params:
            p.grad = None
        row_domains = prep.domain_of_row[rows.cpu()]
        if self.config.surgery.name == "none" or prep.n_domains < 2:
            loss, stats = self._accumulate(prep, rows, totals)
            stats["loss"] = loss
        else:
            per_domain, stats, loss = {}, {}, 0.0
            for d in range(prep.n_domains):
                d_rows = rows[(row_domains == d).to(rows.device)]
                if len(d_rows) == 0:
                    continue
                for p in params:
                    p.grad = None
                d_loss, d_stats = self._accumulate(prep, d_rows, totals)
                loss += d_loss
                stats[f"loss/domain{d}"] = d_loss
                for k, v in d_stats.items():
                    stats[k] = max(stats.get(k, v), v) if k == "ratio_max_dev" else stats.get(k, 0.0) + v
                per_domain[d] = [None if p.grad is None else p.grad.detach().clone() for p in params]
            combined = self.surgery(per_domain, self.rng)
            for p, g in zip(params, combined, strict=True):
                p.grad = g
            stats["loss"] = loss
        if self.master is not None:
            self.master.grads_to_master()
            clip_params = self.master.master
        else:
            clip_params = params
        grad_norm = self.accelerator.clip_grad_norm_(clip_params, self.config.trainer.max_grad_norm)
        stats["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this update used
        self.optimizer.step()
        self.scheduler.step()
        if self.master is not None:
            self.master.master_to_model()
        gn = float(grad_norm) if grad_norm is not None else float("nan")
        stats["grad_norm"] = gn if math.isfinite(gn) else float("nan")
        return stats

    def step(self, step: int) -> dict[str, Any]:
        alg = self.config.algorithm
        started = time.perf_counter()
        trajectories, domains, rewards = self.rollout()
        rollout_s = time.perf_counter() - started
        all_rewards, all_trajectories, all_domains = list(rewards), list(trajectories), list(domains)
        filtered = 0
        if alg.filter_zero_variance_groups:
            keep_groups = {g for g in {t.group for t in trajectories}
                           if len({r for r, t in zip(rewards, trajectories, strict=True) if t.group == g}) > 1}  # fmt: skip
            filtered = len({t.group for t in trajectories}) - len(keep_groups)
            keep = [i for i, t in enumerate(trajectories) if t.group in keep_groups]
            trajectories = [trajectories[i] for i in keep]
            rewards = [rewards[i] for i in keep]
            domains = [domains[i] for i in keep]
        stats: dict[str, list[float]] = {}
        entropy = float("nan")
        if trajectories:
            prep = self.prepare(trajectories, rewards, domains)
            entropy = prep.entropy
            n = len(trajectories)
            for epoch in range(alg.ppo_epochs):
                order = torch.randperm(n)
                for chunk in torch.chunk(order, max(1, min(alg.mini_batches, n))):
                    chunk_stats = self.update(prep, chunk)
                    for key, value in chunk_stats.items():
                        stats.setdefault(key, []).append(value)
                    if epoch == 0:
                        for k in ("ratio_mean", "clip_frac"):
                            stats.setdefault(f"{k}_epoch1", []).append(chunk_stats[k])
            adv_abs = float(masked_mean(prep.advantages.abs(), prep.mask))
            if isinstance(self.engine, RolloutEngine) and hasattr(self.engine, "sync_weights"):
                if self.accelerator.is_main_process:
                    self.engine.sync_weights(self.unwrapped.policy)
                self.accelerator.wait_for_everyone()
        else:
            adv_abs = 0.0
        reward_t = torch.tensor(all_rewards, dtype=torch.float32)
        lengths = [sum(t.loss_mask) for t in all_trajectories]
        metrics: dict[str, Any] = {
            "step": step,
            "reward_mean": float(reward_t.mean()),
            "reward_std": float(reward_t.std()) if len(all_rewards) > 1 else 0.0,
            "reward_max": max(all_rewards),
            "entropy": entropy,
            "response_length": sum(lengths) / len(lengths),
            "total_length": sum(len(t.response_ids) for t in all_trajectories) / len(all_trajectories),
            "finished_frac": sum(t.finished for t in all_trajectories) / len(all_trajectories),
            "tool_calls": sum(t.turns for t in all_trajectories) / len(all_trajectories),
            "advantage_abs": adv_abs,
            "filtered_groups": filtered,
            "rollout_s": rollout_s,
            "step_s": time.perf_counter() - started,
        }
        metrics.update(getattr(self, "_metric_values", {}))
        names = sorted(set(all_domains))
        if len(names) > 1:
            for name in names:
                rs = [r for r, d in zip(all_rewards, all_domains, strict=True) if d == name]
                metrics[f"reward/{name}"] = sum(rs) / len(rs)
        for key, values_of in stats.items():
            metrics[key] = max(values_of) if key == "ratio_max_dev" else sum(values_of) / len(values_of)
        return metrics


def train(config: RLConfig, **pieces: Any) -> list[dict]:
    """Build an `RLTrainer` from `config` (pieces override what the config would build) and train."""
    return RLTrainer(config, **pieces).train()
