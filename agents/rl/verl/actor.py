"""TRE and MGS inside verl's actor update (verl 0.9.1, FSDP/FSDP2 engine), configured by verl's own config.

    # in the verl command line (the trainer `embedkit_sync` selects the worker below in every Ray worker):
    trainer.v1.trainer_mode=embedkit_sync
    +actor_rollout_ref.embedkit.tre.kind=tre_k +actor_rollout_ref.embedkit.tre.coef=0.001
    +actor_rollout_ref.embedkit.mgs.domain_key=data_source

    settings = actor_settings(config.actor_rollout_ref)      # ActorSettings, validated
    check_supported(config.actor_rollout_ref, settings)     # EmbedkitError with the reason, else None

`EmbedkitActorRolloutRefWorker` is verl's `ActorRolloutRefWorker` with its inner training worker
(`actor_worker_cls`, a class attribute verl offers for this) replaced by `EmbedkitTrainingWorker`:

- TRE: verl's engine hands the temperature-scaled logits (softmax(logits / T), the sampling distribution) to the
  loss function's logits-processor call and returns its per-token values with the model output (the
  `distillation_use_topk` path of `FSDPEngineWithLMHead.prepare_model_outputs`, set on each training micro-batch;
  distillation itself stays off). `TRELoss` then runs verl's own `ppo_loss` unchanged and subtracts
  coef · agg(TRE entropy) with the actor's `loss_agg_mode` and verl's global-batch normalisation. verl's logged
  entropy (`actor/entropy_loss`, `entropy_coeff`) stays verl's; TRE logs `actor/tre_entropy`.
- MGS / PCGrad: `DomainSurgeryEngine` wraps the engine's `train_batch`: each micro-batch holds rows of one domain
  (the `domain_key` field, verl's `data_source` by default); its loss is verl's `ppo_loss` normalised over the
  micro-batch alone, times 1/accumulation (the number of micro-batches in the mini-batch), as the official MGS
  actor does; the gradients are summed per domain, projected per parameter tensor (`agents.rl.surgery.mgs`, or
  whole-model `pcgrad`), summed, clipped and stepped by verl's own `optimizer_step`.

Refused at start, with the reason: `use_fused_kernels` with TRE (the fused kernel returns log-probs and entropy
and never materialises the logits; verl then skips the logits processor), distillation with TRE (it owns the
same logits-processor slot), `pad_to_length` with TRE (verl refuses the processor path with it), any strategy
other than fsdp/fsdp2 (Megatron and the other engines are not wrapped: their loss and gradient paths differ and
no CPU test can run them), MGS with `use_dynamic_bsz` (token-budget micro-batches mix domains).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from agents.rl.regularizers import tre_k_entropy, tre_p_entropy
from agents.rl.surgery import GRADIENT_SURGERY
from embedkit.errors import EmbedkitError

SECTION = "embedkit"  # actor_rollout_ref.embedkit
TRE_OUTPUT = "embedkit_tre_entropy"  # the per-token TRE entropy in the engine's model output
SUPPORTED_STRATEGIES = ("fsdp", "fsdp2")


class TRESettings(BaseModel):
    """`actor_rollout_ref.embedkit.tre`: trust-region entropy bonus, loss −= coef · agg(H_TRE)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["tre_k", "tre_p"]
    coef: float = 0.001
    k: int = Field(2, ge=1)
    p: float = Field(0.99, gt=0.0, le=1.0)
    top: int = Field(256, ge=1)
    chunk: int = Field(1024, ge=1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-position TRE entropy of logits already divided by the temperature: [..., V] → [...]."""
        if self.kind == "tre_k":
            return tre_k_entropy(logits, self.k, chunk=self.chunk)
        return tre_p_entropy(logits, self.p, self.top, chunk=self.chunk)


class MGSSettings(BaseModel):
    """`actor_rollout_ref.embedkit.mgs`: gradient surgery across the domains of a mini-batch."""

    model_config = ConfigDict(extra="forbid")
    surgery: Literal["mgs", "pcgrad"] = "mgs"
    domain_key: str = "data_source"
    seed: int = 0


class ActorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tre: TRESettings | None = None
    mgs: MGSSettings | None = None

    @property
    def active(self) -> bool:
        return self.tre is not None or self.mgs is not None


def _plain(config: Any) -> Any:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        return config
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


def _select(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        getter = getattr(node, "get", None)
        node = getter(part, None) if callable(getter) else getattr(node, part, None)
    return default if node is None else node


def actor_settings(actor_rollout_ref: Any) -> ActorSettings:
    """The `embedkit` section of verl's `actor_rollout_ref` config, validated (EmbedkitError naming the field)."""
    raw = _plain(_select(actor_rollout_ref, SECTION, {})) or {}
    try:
        return ActorSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"actor_rollout_ref.{SECTION}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())  # fmt: skip
        raise EmbedkitError(f"bad embedkit actor settings: {problems}") from None


def check_supported(actor_rollout_ref: Any, settings: ActorSettings, *, distillation: bool = False) -> None:
    """Refuse, with the reason, the verl settings under which TRE or MGS would not run as stated."""
    if not settings.active:
        return
    strategy = str(_select(actor_rollout_ref, "actor.strategy", "fsdp"))
    if strategy not in SUPPORTED_STRATEGIES:
        raise EmbedkitError(
            f"actor_rollout_ref.{SECTION} (TRE/MGS) runs in verl's FSDP engine only; actor.strategy={strategy} is "
            "not supported: Megatron and the other engines build their loss and gradients on other paths that "
            "embedkit does not wrap (and no CPU test can run them); use actor_rollout_ref.actor.strategy=fsdp2"
        )
    if settings.tre is not None:
        if bool(_select(actor_rollout_ref, "model.use_fused_kernels", False)):
            raise EmbedkitError(
                "TRE needs the logits, and use_fused_kernels=True computes log-probs and entropy inside the fused "
                "LM-head kernel without materialising them (verl then never calls the logits processor that "
                "computes TRE); set actor_rollout_ref.model.use_fused_kernels=false"
            )
        if distillation:
            raise EmbedkitError(
                "TRE uses verl's logits-processor slot, which distillation also uses; turn one of them off"
            )
        if _select(actor_rollout_ref, "actor.fsdp_config.pad_to_length", None):
            raise EmbedkitError("TRE cannot run with fsdp_config.pad_to_length (verl refuses its logits processor "
                                "with a static pad); unset it")  # fmt: skip
    if settings.mgs is not None and bool(_select(actor_rollout_ref, "actor.use_dynamic_bsz", False)):
        raise EmbedkitError(
            "MGS needs micro-batches of one domain each, as the official MGS actor does; use_dynamic_bsz packs "
            "micro-batches by token budget across domains; set actor_rollout_ref.actor.use_dynamic_bsz=false"
        )


# ---- TRE ------------------------------------------------------------------------------------------------------
def _metric_aggregation(data: Any, config: Any) -> Any:
    """SUM when the loss is normalised over the global batch (each micro-batch a partial sum), else MEAN: the rule
    verl's `ppo_loss` applies to its own loss metrics."""
    from verl.utils.metric import AggregationType

    global_norm = (data["dp_size"] > 1 or data["batch_num_tokens"] is not None
                   or data["global_batch_size"] is not None or config.loss_scale_factor is not None)  # fmt: skip
    return AggregationType.SUM if global_norm else AggregationType.MEAN


class TRELoss:
    """verl's actor loss (`ppo_loss` bound to its ActorConfig) minus coef · agg(TRE entropy).

    verl calls the loss function twice per micro-batch: `(student_logits=, data=)` as its logits processor (the
    logits already divided by the temperature), then `(model_output=, data=, dp_group=)` as the loss."""

    def __init__(self, base: Callable[..., Any], config: Any, settings: TRESettings):
        self.base, self.config, self.settings = base, config, settings

    def __call__(self, model_output: Any = None, data: Any = None, dp_group: Any = None,
                 student_logits: torch.Tensor | None = None) -> Any:  # fmt: skip
        if student_logits is not None:
            return {TRE_OUTPUT: self.settings.entropy(student_logits)}
        from verl.trainer.ppo.core_algos import agg_loss
        from verl.utils.metric import Metric
        from verl.workers.utils.padding import no_padding_2_padding

        loss, metrics = self.base(model_output=model_output, data=data, dp_group=dp_group)
        if TRE_OUTPUT not in model_output:
            if torch.is_grad_enabled():  # a training micro-batch always asks for the logits processor
                raise EmbedkitError("TRE: the engine returned no per-token TRE entropy for a training micro-batch "
                                    "(was the logits processor skipped, e.g. by fused kernels?)")  # fmt: skip
            return loss, metrics  # a forward-only pass that computes the loss (verl's infer_batch): no bonus
        entropy = no_padding_2_padding(model_output[TRE_OUTPUT], data)
        mask = data.select("response_mask").to_padded_tensor()["response_mask"].to(bool)
        info = {"dp_size": data["dp_size"], "batch_num_tokens": data["batch_num_tokens"],
                "global_batch_size": data["global_batch_size"], "loss_scale_factor": self.config.loss_scale_factor}  # fmt: skip
        tre = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=self.config.loss_agg_mode, **info)
        metrics["actor/tre_entropy"] = Metric(value=tre, aggregation=_metric_aggregation(data, self.config))
        return loss - self.settings.coef * tre, metrics


# ---- MGS ------------------------------------------------------------------------------------------------------
class MicroBatchLocalLoss:
    """The loss of one micro-batch normalised over that micro-batch alone (verl's global token / sequence counts
    removed), times `scale` (1/accumulation): the official MGS actor's per-micro-batch loss."""

    def __init__(self, base: Callable[..., Any], scale: float):
        self.base, self.scale = base, scale

    def __call__(self, model_output: Any = None, data: Any = None, dp_group: Any = None,
                 student_logits: torch.Tensor | None = None) -> Any:  # fmt: skip
        if student_logits is not None:
            return self.base(student_logits=student_logits, data=data)
        from verl.utils import tensordict_utils as tu

        # dp_size 1: FSDP averages the ranks' gradients, as it does for the official per-rank loss
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
        loss, metrics = self.base(model_output=model_output, data=data, dp_group=dp_group)
        return loss * self.scale, metrics


def _local(grad: torch.Tensor) -> torch.Tensor:
    to_local = getattr(grad, "to_local", None)  # FSDP2 gradients are DTensors: work on this rank's shard
    return to_local() if callable(to_local) else grad


def _sharded_dot(groups: list[Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dot product of two gradients held as shards: the local dot summed over the shard group(s)."""

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        value = torch.dot(a.flatten().double(), b.flatten().double())
        for group in groups:
            torch.distributed.all_reduce(value, group=group)
        return value

    return dot


def _shard_groups(params: list[torch.nn.Parameter]) -> list[Any]:
    """The process groups of the mesh dimensions the parameters are sharded over (not the replicated ones of
    HSDP, whose ranks hold the same shard)."""
    for p in params:
        mesh = getattr(p, "device_mesh", None)
        if mesh is not None and torch.distributed.is_initialized() and mesh.size() > 1:
            return [mesh.get_group(dim) for dim, placement in enumerate(getattr(p, "placements", ()))
                    if placement.is_shard() and mesh.size(dim) > 1]  # fmt: skip
    return []


def domain_micro_batches(domains: list[str], micro_batch_size: int) -> list[tuple[str, list[int]]]:
    """Rows grouped by domain (in order of first appearance), each domain cut into micro-batches."""
    rows: dict[str, list[int]] = {}
    for i, domain in enumerate(domains):
        rows.setdefault(domain, []).append(i)
    return [(domain, idx[s : s + micro_batch_size]) for domain, idx in rows.items()
            for s in range(0, len(idx), micro_batch_size)]  # fmt: skip


class DomainSurgeryEngine:
    """A verl engine whose `train_batch` does per-domain backward passes and gradient surgery; every other
    attribute is the wrapped engine's."""

    def __init__(self, engine: Any, settings: MGSSettings):
        self._engine, self._settings = engine, settings
        self._rng = random.Random(settings.seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _domains(self, data: Any) -> list[str]:
        from verl.utils import tensordict_utils as tu

        key = self._settings.domain_key
        values = tu.get(data, key, default=None)
        if values is None:
            raise EmbedkitError(f"MGS: the actor batch has no '{key}' field (actor_rollout_ref.{SECTION}.mgs."
                                f"domain_key); fields: {sorted(data.keys())}")  # fmt: skip
        values = list(values) if not isinstance(values, str) else [values]
        if len(values) != len(data):
            raise EmbedkitError(f"MGS: '{key}' has {len(values)} values for {len(data)} rows")
        return [str(v) for v in values]

    def train_batch(self, data: Any, loss_function: Callable[..., Any]) -> Any:
        from verl.utils import tensordict_utils as tu
        from verl.utils.py_functional import append_to_dict

        engine = self._engine
        micro_size = int(tu.get(data, "micro_batch_size_per_gpu"))
        parts = domain_micro_batches(self._domains(data), micro_size)
        scale = 1.0 / math.ceil(len(data) / micro_size)  # 1/accumulation, the micro-batches verl itself would run
        params = [p for p in engine.module.parameters() if p.requires_grad]
        buffers: dict[str, list[torch.Tensor]] = {}
        losses: list[Any] = []
        metrics: dict[str, Any] = {}
        engine.optimizer_zero_grad()
        for domain, rows in parts:
            part = tu.index_select_tensor_dict(data, rows)
            tu.assign_non_tensor(part, micro_batch_size_per_gpu=len(rows))  # one micro-batch, maybe a short one
            out = engine.forward_backward_batch(part, MicroBatchLocalLoss(loss_function, scale), forward_only=False)
            losses.extend(out["loss"])
            append_to_dict(metrics, out["metrics"])  # verl's own merge of micro-batch metrics
            with torch.no_grad():
                grads = [_local(p.grad) if p.grad is not None else torch.zeros_like(_local(p)) for p in params]
                if domain in buffers:
                    for buffer, grad in zip(buffers[domain], grads, strict=True):
                        buffer.add_(grad)
                else:
                    buffers[domain] = [g.detach().clone() for g in grads]
            engine.optimizer_zero_grad()
        with torch.no_grad():
            combined = self.combine(buffers, params)
            for p, grad in zip(params, combined, strict=True):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _local(p.grad).copy_(grad)
        grad_norm = engine.optimizer_step()
        if engine.is_mp_src_rank_with_outputs():
            metrics["grad_norm"] = grad_norm
            metrics["mgs/domains"] = [len(buffers)]  # per-micro-batch lists, like verl's own metrics
        return {"model_output": {}, "loss": losses, "metrics": metrics}

    def combine(self, buffers: dict[str, list[torch.Tensor]], params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """Per-domain gradient shards → the projected sum (`agents.rl.surgery`), with dot products over the
        full tensors however FSDP shards them."""
        surgery = GRADIENT_SURGERY.get(self._settings.surgery)
        out = surgery(dict(buffers), self._rng, dot=_sharded_dot(_shard_groups(params)))
        return [g if g is not None else torch.zeros_like(_local(p)) for g, p in zip(out, params, strict=True)]


# ---- the workers ----------------------------------------------------------------------------------------------
class EmbedkitTrainingWorker(TrainingWorker):
    """verl's TrainingWorker; with MGS its engine does per-domain surgery, with TRE every training micro-batch
    asks the engine for the logits processor."""

    embedkit: ActorSettings = ActorSettings()

    def use_settings(self, settings: ActorSettings) -> None:
        self.embedkit = settings
        engine: Any = getattr(self, "engine")  # noqa: B009  (verl sets it in __init__; mypy cannot type it)
        if settings.mgs is not None and not isinstance(engine, DomainSurgeryEngine):
            self.engine = DomainSurgeryEngine(engine, settings.mgs)

    def train_batch(self, data: Any) -> Any:
        if self.embedkit.tre is not None:
            from verl.utils import tensordict_utils as tu

            tu.assign_non_tensor(data, distillation_use_topk=True)
        return super().train_batch(data)


class EmbedkitActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's ActorRolloutRefWorker with TRE / MGS from `actor_rollout_ref.embedkit`."""

    actor_worker_cls = EmbedkitTrainingWorker

    def __init__(self, config: Any, role: str, *args: Any, **kwargs: Any):
        from agents.rl.verl.plugin import register_all

        register_all()  # this process's registries (policy losses) get embedkit's names, Ray workers included
        super().__init__(config, role, *args, **kwargs)
        self.embedkit = actor_settings(config)
        check_supported(config, self.embedkit, distillation=self.distillation_enabled)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)  # as verl's: the single controller dispatches by this mark
    def init_model(self) -> None:
        super().init_model()
        if self.actor is None or not self.embedkit.active:
            return
        self.actor.use_settings(self.embedkit)
        if self.embedkit.tre is not None:
            base: Any = getattr(self, "loss_fn")  # noqa: B009  (functools.partial(ppo_loss, config=ActorConfig))
            self.loss_fn = TRELoss(base, base.keywords["config"], self.embedkit.tre)
            self.actor.set_loss_fn(self.loss_fn)
