"""Run CoCoA's stages with checkpoints that resume, LoRA or full fine-tuning, bf16, gradient checkpointing
and multi-GPU through accelerate (`accelerate launch -m embedkit cocoa pretrain ...` or torchrun).

    trainer = CocoaTrainer(config)
    model_dir = trainer.pretrain(read_pretrain_records("data/pretrain.jsonl"))        # stages 1 and 2
    model_dir = CocoaTrainer(config, init=model_dir).contrastive(read_contrastive_pairs("pairs.jsonl"))

Layout of `run.output_dir`: `<phase>/checkpoint-<stage>-<step>/` (weights or LoRA adapter, reconstruction
heads, optimizer, trainer_state.json) and `<phase>/model/` (the final model, loadable by
`MultimodalEmbedder` and `from_pretrained`). `phase` is `pretrain` or `contrastive`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.data import ContrastivePair
from embedkit.cocoa.objectives import (
    ReconstructionHeads,
    StepLoss,
    bridge_loss,
    contrastive_loss,
    stage2_inputs,
    warmup_loss,
)
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, atomic_write, recover_children
from embedkit.multimodal.embedder import EMBEDDER_SETTINGS
from embedkit.multimodal.loading import LoadedVLM, load_vlm, pick_device, unwrap
from embedkit.multimodal.sequence import MultimodalInput, VisionTokens, encode_batch
from embedkit.torch_load import load_tensors

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
HEADS_NAME = "cocoa_heads.pt"
OPTIMIZER_NAME = "optimizer.pt"


@dataclass
class StageResult:
    stage: str
    steps: int
    losses: list[dict[str, float]]


class CocoaTrainer:
    """Holds one model through the stages of a phase; `history` keeps every logged loss."""

    def __init__(self, config: CocoaConfig, *, init: str | Path | None = None,
                 loaded: LoadedVLM | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState

        # accelerate keeps one process-wide state; in a single process (tests, notebooks, benchmarks) a new
        # trainer may ask for another precision, so start that state afresh.
        if AcceleratorState._shared_state and PartialState().num_processes == 1:
            AcceleratorState._reset_state()
        self.config = config
        self.init = str(init or config.model.name_or_path)
        device = pick_device(config.run.device)
        self.accelerator = Accelerator(
            mixed_precision=config.run.mixed_precision,
            gradient_accumulation_steps=config.optim.gradient_accumulation,
            cpu=device == "cpu",
        )
        self.device = self.accelerator.device
        self.vlm = loaded or load_vlm(self.init, device=str(self.device), dtype=config.weights_dtype,
                                      attn_implementation=config.model.attn_implementation)
        self._ensure_token(config.model.mask_token)
        self._ensure_token(config.stage2.decoder_start_token)
        self.tokens = VisionTokens.from_tokenizer(self.vlm.tokenizer, config.model.eos_token,
                                                  config.model.mask_token, config.stage2.decoder_start_token)
        self.merge_size = int(self.vlm.image_processor.merge_size)
        with torch.random.fork_rng(devices=[]):  # heads' init depends on the seed only, not on earlier work
            torch.manual_seed(config.optim.seed)
            self.heads = ReconstructionHeads.for_model(self.vlm.model, self.vlm.image_processor).to(self.device)
        self._lora_applied = False
        self.history: list[StageResult] = []

    # ----------------------------------------------------------------------------------- model set-up
    def _ensure_token(self, token: str) -> None:
        """Add a special token the stages need (mask, decoder start) when the tokenizer lacks it."""
        tokenizer = self.vlm.tokenizer
        if token in tokenizer.get_vocab():
            return
        tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        embeddings = unwrap(self.vlm.model).get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:  # Qwen's embedding matrix has spare rows
            unwrap(self.vlm.model).resize_token_embeddings(len(tokenizer))

    def _prepare_model(self, adapter_dir: Path | None = None):
        model = self.vlm.model
        settings = self.config.model
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if settings.lora is not None and not self._lora_applied:
            from peft import LoraConfig, PeftModel, get_peft_model

            # Adapters on the language model only: peft matches module names, and the vision tower's
            # projections are called qkv/proj, so the default targets leave it alone.
            lora = settings.lora
            if adapter_dir is not None:
                model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
            else:
                peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                         target_modules=_language_targets(model, lora.target_modules))
                model = get_peft_model(model, peft_config)
            self._lora_applied = True
        elif settings.freeze_vision:
            for name, parameter in unwrap(model).model.visual.named_parameters():
                parameter.requires_grad = "merger" in name
        self.vlm.model = model
        model.train()
        return model

    # ----------------------------------------------------------------------------------- phases
    def pretrain(self, records: list[MultimodalInput], *, resume: bool = True) -> Path:
        """Stage 1 then stage 2; returns the folder of the final model."""
        if not records:
            raise EmbedkitError("pre-training needs at least one record")
        phase_dir, checkpoint, state = self._open_phase("pretrain", "stage1", resume=resume)
        stages = [("stage1", self.config.stage1.steps, self.config.stage1.learning_rate, self._stage1_step),
                  ("stage2", self.config.stage2.steps, self.config.stage2.learning_rate, self._stage2_step)]
        order = [name for name, *_ in stages]
        for name, steps, lr, step_fn in stages:
            if order.index(name) < order.index(state["stage"]):
                continue
            start = state["step"] if name == state["stage"] else 0
            optimizer_state = checkpoint / OPTIMIZER_NAME if (checkpoint and name == state["stage"]) else None
            self._run_stage(phase_dir, name, steps, lr, start, records, step_fn, optimizer_state)
        return self._export(phase_dir)

    def contrastive(self, pairs: Sequence[ContrastivePair], *, resume: bool = True) -> Path:
        """Stage 3; returns the folder of the final model."""
        if not pairs:
            raise EmbedkitError("contrastive training needs at least one pair")
        phase_dir, checkpoint, state = self._open_phase("contrastive", "stage3", resume=resume)
        settings = self.config.stage3
        self._run_stage(phase_dir, "stage3", settings.steps, settings.learning_rate, state["step"], pairs,
                        self._stage3_step, checkpoint / OPTIMIZER_NAME if checkpoint else None)
        return self._export(phase_dir)

    def _open_phase(self, phase: str, first_stage: str, *, resume: bool) -> tuple[Path, Path | None, dict[str, Any]]:
        """The phase's folder, its latest checkpoint (when resuming) and the stage/step to go on from; the model
        is restored from that checkpoint."""
        phase_dir = Path(self.config.run.output_dir) / phase
        checkpoint = latest_checkpoint(phase_dir) if resume else None
        state: dict[str, Any] = _read_state(checkpoint) if checkpoint else {"stage": first_stage, "step": 0}
        self._start_from(checkpoint)
        return phase_dir, checkpoint, state

    # ----------------------------------------------------------------------------------- steps
    def _encode(self, items, **kwargs):
        return encode_batch(items, self.vlm.tokenizer, self.vlm.image_processor, self.tokens,
                            max_length=self.config.model.max_length,
                            padding_side=self.config.model.padding_side,
                            image_base_dir=self.config.data.image_base_dir,
                            min_pixels=self.config.model.min_pixels, max_pixels=self.config.model.max_pixels,
                            text_reserve=self.config.model.text_reserve, **kwargs).to(self.device)

    def _stage1_step(self, items: list[MultimodalInput], generator: torch.Generator) -> StepLoss:
        batch = self._encode(items)
        mask = self.tokens.mask
        if mask is None:  # `_ensure_token` added it; a tokenizer that still lacks one cannot run stage 1
            raise EmbedkitError(f"the tokenizer has no mask token {self.config.model.mask_token!r}")
        return warmup_loss(self.vlm.model, self.heads, batch, self.config.stage1, mask, self.merge_size, generator)

    def _stage2_step(self, items: list[MultimodalInput], generator: torch.Generator) -> StepLoss:
        settings = self.config.stage2
        content, targets = stage2_inputs(items, settings)
        batch = self._encode(content, targets=targets, image_target_slots=settings.reconstruct_image)
        return bridge_loss(self.vlm.model, self.heads, batch, settings, self.merge_size)

    def _stage3_step(self, pairs: list[ContrastivePair], generator: torch.Generator) -> StepLoss:
        settings = self.config.stage3
        embedder = self.embedder(normalize=settings.normalize, content_attention=settings.content_attention)
        queries, positives, negatives, owners = self._stage3_vectors(pairs, embedder)
        return contrastive_loss(queries, positives, negatives if owners else None, owners, settings)

    def embedder(self, **overrides):
        """A `MultimodalEmbedder` over the model being trained (shares its weights)."""
        from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig

        settings = dict(model=self.init, max_length=self.config.model.max_length,
                        padding_side=self.config.model.padding_side, eos_token=self.config.model.eos_token,
                        image_base_dir=self.config.data.image_base_dir,
                        min_pixels=self.config.model.min_pixels, max_pixels=self.config.model.max_pixels,
                        text_reserve=self.config.model.text_reserve,
                        content_attention=self.config.stage3.content_attention,
                        normalize=self.config.stage3.normalize)
        settings.update(overrides)
        return MultimodalEmbedder(MultimodalEmbedderConfig(**settings), loaded=self.vlm)

    # ----------------------------------------------------------------------------------- loop
    def _run_stage(self, phase_dir: Path, stage: str, steps: int, lr: float, start: int, data: Sequence,
                   step_fn: Callable, optimizer_state: Path | None) -> None:
        optim = self.config.optim
        if steps == 0 or start >= steps:
            self.history.append(StageResult(stage, steps, []))
            return
        parameters = [p for p in self.vlm.model.parameters() if p.requires_grad]
        parameters += list(self.heads.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, optim.warmup_steps, steps, optim.lr_schedule, optim.min_lr_ratio))
        if optimizer_state is not None and optimizer_state.exists():
            saved = load_tensors(optimizer_state)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        # The model stays unwrapped: the stages call its submodules directly (custom masks), which a DDP
        # wrapper would not see, so gradients are averaged across processes by hand (`_sync_gradients`).
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it
        # once per process), so `steps` is the schedule's length on any number of devices.
        model = self.vlm.model
        optimizer = self.accelerator.prepare(optimizer)
        losses: list[dict[str, float]] = []
        sampler = BatchSampler(len(data), optim.batch_size, optim.seed, self.accelerator.process_index,
                               self.accelerator.num_processes)
        cached = stage == "stage3" and self.config.stage3.grad_cache and optim.gradient_accumulation > 1
        for step in range(start, steps):
            generator = torch.Generator().manual_seed(zlib.crc32(f"{optim.seed}/{stage}/{step}".encode()))
            micro_batches = [[data[i] for i in sampler.batch(step * optim.gradient_accumulation + micro)]
                             for micro in range(optim.gradient_accumulation)]
            if cached:
                # One contrastive batch over all micro-batches: in-batch negatives grow with accumulation.
                with self.accelerator.autocast():
                    result = self.cached_contrastive_backward(micro_batches)
                self._sync_gradients(parameters)
                self.accelerator.clip_grad_norm_(parameters, optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            else:
                for items in micro_batches:
                    with self.accelerator.accumulate(model), self.accelerator.autocast():
                        result = step_fn(items, generator)
                        self.accelerator.backward(result.total)
                        if self.accelerator.sync_gradients:
                            self._sync_gradients(parameters)
                            self.accelerator.clip_grad_norm_(parameters, optim.max_grad_norm)
                        optimizer.step()
                        if self.accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad()
            losses.append({"step": step + 1, "lr": float(scheduler.get_last_lr()[0]), **result.parts})
            if (step + 1) % self.config.run.log_every == 0 or step + 1 == steps:
                log.info("%s step %d/%d %s", stage, step + 1, steps, result.parts)
            if (step + 1) % self.config.run.save_every == 0 and step + 1 < steps:
                self._save_checkpoint(phase_dir, stage, step + 1, optimizer, scheduler)
        self._save_checkpoint(phase_dir, stage, steps, optimizer, scheduler)
        self.history.append(StageResult(stage, steps, losses))

    def _stage3_vectors(self, pairs: list[ContrastivePair], embedder):
        """Query, positive and hard-negative vectors of one micro-batch, with the negatives' owners."""
        settings = self.config.stage3
        queries = embedder.encode_batch_tensor([pair.query for pair in pairs])
        targets = [pair.positive for pair in pairs]
        owners: list[int] = []
        for index, pair in enumerate(pairs):
            for negative in pair.negatives[: settings.hard_negatives]:
                targets.append(negative)
                owners.append(index)
        vectors = embedder.encode_batch_tensor(targets)
        return queries, vectors[: len(pairs)], vectors[len(pairs):], owners

    def cached_contrastive_backward(self, micro_batches: list[list[ContrastivePair]]) -> StepLoss:
        """GradCache: embed every micro-batch without gradients, take the contrastive loss over all of
        them (and over every process's positives with `gather_across_devices`), then re-embed each
        micro-batch with gradients and backpropagate its share of the loss's gradient.

        The gradients equal those of one big batch; only one micro-batch's activations live at a time.
        """
        settings = self.config.stage3
        embedder = self.embedder(normalize=settings.normalize, content_attention=settings.content_attention)
        cache = []
        with torch.no_grad():
            for pairs in micro_batches:
                rng = torch.get_rng_state()  # the gradient pass must see the same dropout masks
                cache.append((rng, self._stage3_vectors(pairs, embedder)))
        queries = torch.cat([c[1][0] for c in cache]).requires_grad_()
        local_positives = torch.cat([c[1][1] for c in cache])
        negatives_list, owners, offset = [], [], 0
        for _, (q, _p, n, own) in cache:
            negatives_list.append(n)
            owners += [offset + o for o in own]
            offset += q.shape[0]
        negatives = torch.cat(negatives_list).requires_grad_() if owners else None
        world = self.accelerator.num_processes
        rank = self.accelerator.process_index
        gather = settings.gather_across_devices and world > 1
        positives = (self.accelerator.gather(local_positives) if gather else local_positives).requires_grad_()
        shift = rank * local_positives.shape[0] if gather else 0
        result = contrastive_loss(queries, positives, negatives, owners, settings, positive_offset=shift)
        result.total.backward()
        query_grad, positive_grad = queries.grad, positives.grad
        negative_grad = negatives.grad if negatives is not None else None
        assert query_grad is not None and positive_grad is not None  # leaves of the loss just backpropagated
        if gather:  # every process's queries scored this process's positives: sum their gradients
            positive_grad = self.accelerator.reduce(positive_grad, reduction="sum")
            positive_grad = positive_grad[shift: shift + local_positives.shape[0]]
        # `_sync_gradients` then averages over processes: the gradient of the mean of their losses.
        start = negative_start = 0
        for (rng, (q, _p, n, _own)), pairs in zip(cache, micro_batches, strict=True):
            torch.set_rng_state(rng)
            q2, p2, n2, _ = self._stage3_vectors(pairs, embedder)
            rows = slice(start, start + q.shape[0])
            surrogate = (q2 * query_grad[rows]).sum() + (p2 * positive_grad[rows]).sum()
            if n.shape[0] and negative_grad is not None:
                surrogate = surrogate + (n2 * negative_grad[negative_start: negative_start + n.shape[0]]).sum()
            # accelerate divides by the accumulation steps; this one loss already covers all of them.
            self.accelerator.backward(surrogate * self.accelerator.gradient_accumulation_steps)
            start += q.shape[0]
            negative_start += n.shape[0]
        return StepLoss(result.total.detach(), {**result.parts, "batch": float(queries.shape[0])})

    def _sync_gradients(self, parameters) -> None:
        if self.accelerator.num_processes == 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")

    # ----------------------------------------------------------------------------------- saving
    def _save_checkpoint(self, phase_dir: Path, stage: str, step: int, optimizer, scheduler) -> None:
        """Rank 0 writes; every rank waits for it, so no rank resumes from a half-written checkpoint."""
        if self.accelerator.is_main_process:
            self._write_checkpoint(phase_dir, stage, step, optimizer, scheduler)
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(self, phase_dir: Path, stage: str, step: int, optimizer, scheduler) -> None:
        target = phase_dir / f"checkpoint-{stage}-{step:06d}"
        model = self.accelerator.unwrap_model(self.vlm.model)
        with atomic_directory(target, overwrite=True, marker=STATE_NAME, what="checkpoint") as tmp:
            model.save_pretrained(tmp)
            torch.save(self.heads.state_dict(), tmp / HEADS_NAME)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       tmp / OPTIMIZER_NAME)
            self.vlm.tokenizer.save_pretrained(tmp)
            self.vlm.image_processor.save_pretrained(tmp)
            (tmp / STATE_NAME).write_text(json.dumps({
                "stage": stage, "step": step, "init": self.init,
                "config": self.config.model_dump(mode="json"),
            }, indent=2), encoding="utf-8")
        _prune(phase_dir, self.config.run.keep_checkpoints)

    def _start_from(self, checkpoint: Path | None) -> None:
        """Set the model up for training, from a checkpoint's weights (or LoRA adapter) when resuming."""
        lora = self.config.model.lora
        if checkpoint is not None:
            log.info("resuming from %s", checkpoint)
            if lora is None and not self._lora_applied:
                settings = self.config.model
                self.vlm.model = load_vlm(checkpoint, device=str(self.device), dtype=self.config.weights_dtype,
                                          attn_implementation=settings.attn_implementation).model
        self._prepare_model(adapter_dir=checkpoint if (checkpoint is not None and lora is not None) else None)
        heads = checkpoint / HEADS_NAME if checkpoint is not None else None
        if heads is not None and heads.exists():
            self.heads.load_state_dict(load_tensors(heads))

    def _export(self, phase_dir: Path) -> Path:
        """Write `<phase>/model`: full weights (LoRA merged when asked), tokenizer, image processor."""
        target = phase_dir / "model"
        if self.accelerator.is_main_process:
            self._write_model(target)
        self.accelerator.wait_for_everyone()
        return target

    def _write_model(self, target: Path) -> None:
        model = self.accelerator.unwrap_model(self.vlm.model)
        lora = self.config.model.lora
        with atomic_directory(target, overwrite=True, marker="config.json", what="model") as tmp:
            if lora is not None and lora.merge_on_save:
                import copy

                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(tmp)
            else:
                model.save_pretrained(tmp)
            torch.save(self.heads.state_dict(), tmp / HEADS_NAME)
            self.vlm.tokenizer.save_pretrained(tmp)
            self.vlm.image_processor.save_pretrained(tmp)
            with atomic_write(tmp / "cocoa_history.json") as handle:
                json.dump([result.__dict__ for result in self.history], handle, indent=1)
            with atomic_write(tmp / EMBEDDER_SETTINGS) as handle:  # how to embed with this model
                json.dump({"eos_token": self.config.model.eos_token,
                           "content_attention": self.config.stage3.content_attention,
                           "normalize": self.config.stage3.normalize,
                           "max_length": self.config.model.max_length,
                           "min_pixels": self.config.model.min_pixels,
                           "max_pixels": self.config.model.max_pixels,
                           "text_reserve": self.config.model.text_reserve,
                           "decoder_start_token": self.config.stage2.decoder_start_token,
                           "stage2_bridge": self.config.stage2.bridge}, handle, indent=1)


def lr_factor(step: int, warmup: int, total: int, schedule: str, floor: float = 0.0) -> float:
    """Learning-rate multiplier after `step` optimizer steps: linear warm-up, then constant, linear or
    cosine decay to `floor` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape


def _language_targets(model, names: list[str]) -> list[str]:
    """Full module paths of the language model's projections named in `names`."""
    wanted = set(names)
    found = [name for name, _ in unwrap(model).named_modules()
             if name.split(".")[-1] in wanted and ".visual." not in f".{name}"]
    if not found:
        raise EmbedkitError(f"no language-model modules named {sorted(wanted)} to put LoRA adapters on")
    return found


class BatchSampler:
    """Deterministic batches: epoch e is a permutation seeded by (seed, e); step s takes the next slice.

    Resuming at step s gives exactly the batches an uninterrupted run would have seen. With several
    processes each takes its share of a global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world

    def batch(self, step: int) -> list[int]:
        global_size = self.batch_size * self.world
        start = step * global_size
        indices = []
        for position in range(start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size):
            epoch, offset = divmod(position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
            indices.append(int(order[offset]))
        if self.size < self.batch_size:
            indices = list(dict.fromkeys(indices))  # tiny data: no duplicate inputs within one batch
        return indices


def latest_checkpoint(phase_dir: Path) -> Path | None:
    """The newest complete checkpoint in a phase folder (by stage, then step), or None."""
    recover_children(phase_dir)  # a save killed mid-swap leaves checkpoint-*.new-*/.old-* until a reader restores it
    candidates = []
    for path in Path(phase_dir).glob("checkpoint-*"):
        if (path / STATE_NAME).exists():
            state = _read_state(path)
            candidates.append(((state["stage"], state["step"]), path))
    return max(candidates)[1] if candidates else None


def _read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))


def _prune(phase_dir: Path, keep: int) -> None:
    checkpoints = sorted(
        (p for p in phase_dir.glob("checkpoint-*") if (p / STATE_NAME).exists()),
        key=lambda p: (_read_state(p)["stage"], _read_state(p)["step"]),
    )
    for old in checkpoints[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def loss_trend(result: StageResult, key: str = "loss", window: int = 3) -> tuple[float, float]:
    """Mean loss over the first and the last `window` logged steps of a stage."""
    values = [entry[key] for entry in result.losses if key in entry and math.isfinite(entry[key])]
    if not values:
        raise EmbedkitError(f"stage {result.stage} logged no {key!r}")
    window = max(1, min(window, len(values) // 2 or 1))
    return sum(values[:window]) / window, sum(values[-window:]) / window
