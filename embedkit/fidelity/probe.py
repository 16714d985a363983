"""Run the compression-fidelity probes on a compressor-decoder: a CoCoA checkpoint whose <EOS> state is
the compressed context and whose stage-2 attention decodes the text back from <EOS> alone.

    compressor = EosCompressor.from_path("runs/cocoa/pretrain/model")
    report = run_probes(compressor, PLANTED_TEXTS)
    print(report.summary_markdown())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel

from embedkit.cocoa.masks import build_attention_mask
from embedkit.cocoa.objectives import bridge_forward
from embedkit.fidelity import metrics
from embedkit.fidelity.planted import ProbeText
from embedkit.multimodal.forward import forward_hidden, lm_logits
from embedkit.multimodal.loading import LoadedVLM, load_vlm, pick_device
from embedkit.multimodal.sequence import (
    EncodedBatch,
    MultimodalInput,
    Segment,
    VisionTokens,
    encode_batch,
    eos_index,
)


@dataclass
class Reconstruction:
    text: str
    token_ids: list[int]
    step_entropies: list[float]  # entropy (nats) of the next-token distribution at each decoding step
    nll: float  # mean negative log-likelihood of the original tokens given <EOS> (teacher forcing)


class EosCompressor:
    """Compress a text into its <EOS> state; decode it back through the stage-2 (EOS-bridge) mask."""

    def __init__(self, vlm: LoadedVLM, *, eos_token: str = "<|endoftext|>", max_length: int = 256,
                 content_attention: Literal["causal", "bidirectional"] = "causal",
                 decoder_start_token: str | None = "<|im_start|>",
                 bridge: Literal["final", "layerwise"] = "final") -> None:
        self.vlm = vlm
        # Decoding starts at the decoder-start token after <EOS>, as stage 2 trained it (None: from <EOS>,
        # for checkpoints trained before the token existed).
        self.tokens = VisionTokens.from_tokenizer(vlm.tokenizer, eos_token, mask_token=None,
                                                  decoder_start_token=decoder_start_token)
        self.max_length = max_length
        self.content_attention = content_attention
        self.bridge = bridge  # how stage 2 read <EOS>: decoding must read it the same way

    @classmethod
    def from_path(cls, path: str, *, device: str = "auto", dtype: str = "float32", **options) -> EosCompressor:
        """Load a checkpoint; the decoder-start token it was trained with is read from its settings."""
        import json
        from pathlib import Path

        from embedkit.multimodal.embedder import EMBEDDER_SETTINGS

        saved = Path(path) / EMBEDDER_SETTINGS
        if saved.is_file():
            values = json.loads(saved.read_text(encoding="utf-8"))
            if "decoder_start_token" in values:
                options.setdefault("decoder_start_token", values["decoder_start_token"])
            # Checkpoints saved before the setting existed were trained layerwise.
            options.setdefault("bridge", values.get("stage2_bridge", "layerwise"))
        return cls(load_vlm(path, device=pick_device(device), dtype=dtype), **options)

    @property
    def device(self):
        return next(self.vlm.model.parameters()).device

    def _batch(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> EncodedBatch:
        return encode_batch([MultimodalInput(text=t) for t in texts], self.vlm.tokenizer, self.vlm.image_processor,
                            self.tokens, max_length=self.max_length, padding_side="right",
                            targets=list(targets) if targets is not None else None).to(self.device)

    def _mask(self, batch: EncodedBatch):
        return build_attention_mask(batch.segments, "eos_bridge", content_attention=self.content_attention)

    def _decoder_hidden(self, batch: EncodedBatch):
        """Hidden states of the decoder side, reading <EOS> the way stage 2 trained it."""
        return bridge_forward(self.vlm.model, batch, bridge=self.bridge,
                              content_attention=self.content_attention).hidden

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """The raw (unnormalised) <EOS> hidden states: the compressed contexts."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self._batch(texts[start:start + batch_size])
            hidden = forward_hidden(self.vlm.model, batch, self._mask(batch)).hidden
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            chunks.append(hidden[rows, eos_index(batch.segments)].float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    @torch.no_grad()
    def reconstruct(self, text: str, max_new_tokens: int | None = None) -> Reconstruction:
        """Greedy decoding from <EOS>; each step sees only <EOS> and the tokens decoded so far."""
        reference = self.vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = max_new_tokens or len(reference) + 8
        base = self._batch([text])
        start = [self.tokens.decoder_start] if self.tokens.decoder_start is not None else []
        generated: list[int] = []
        entropies: list[float] = []
        for _ in range(limit):
            extra = torch.tensor([start + generated], dtype=torch.long, device=self.device).reshape(1, -1)
            kinds = [int(Segment.DECODER_START)] * len(start) + [int(Segment.TARGET)] * len(generated)
            length = base.input_ids.shape[1] + extra.shape[1]
            batch = EncodedBatch(
                input_ids=torch.cat([base.input_ids, extra], dim=1),
                attention_mask=torch.ones((1, length), dtype=torch.long, device=self.device),
                segments=torch.cat([base.segments, torch.tensor([kinds], dtype=torch.long,
                                                                device=self.device).reshape(1, -1)], dim=1),
                mm_token_type_ids=torch.zeros((1, length), dtype=torch.int, device=self.device),
            )
            hidden = self._decoder_hidden(batch)
            probabilities = torch.softmax(lm_logits(self.vlm.model, hidden[0, -1]).float(), dim=-1)
            entropies.append(metrics.entropy(probabilities.cpu().numpy()))
            token = int(probabilities.argmax())
            if token == self.tokens.eos:
                break
            generated.append(token)
        decoded = self.vlm.tokenizer.decode(generated, skip_special_tokens=True)
        return Reconstruction(decoded, generated, entropies, self.teacher_forced_nll(text))

    @torch.no_grad()
    def teacher_forced_nll(self, text: str) -> float:
        """Mean NLL of the text's tokens (and the closing <EOS>) decoded through <EOS> alone."""
        batch = self._batch([text], targets=[text])
        hidden = self._decoder_hidden(batch)
        target = batch.segments == int(Segment.TARGET)
        source = torch.zeros_like(target)
        source[:, :-1] = target[:, 1:]
        logits = lm_logits(self.vlm.model, hidden[source]).float()
        return float(torch.nn.functional.cross_entropy(logits, batch.input_ids[target]))


class FidelityReport(BaseModel):
    """Aggregate probe results (and one row per text)."""

    model: str
    texts: int
    bleu: float
    exact_token_recovery: float
    reconstruction_nll: float
    entity_preservation: float | None
    number_preservation: float | None
    roles: dict[str, int]
    swap_cosine: float | None
    effective_rank: float
    effective_rank_centered: float
    mean_decoding_entropy: float
    rows: list[dict]

    def summary_markdown(self) -> str:
        def fmt(value):
            return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

        fields = ["texts", "bleu", "exact_token_recovery", "reconstruction_nll", "entity_preservation",
                  "number_preservation", "roles", "swap_cosine", "effective_rank", "effective_rank_centered",
                  "mean_decoding_entropy"]
        lines = [f"model: `{self.model}`", "", "| probe | value |", "|---|---|"]
        lines += [f"| {name} | {fmt(getattr(self, name))} |" for name in fields]
        lines += ["", "| text | reconstruction | role |", "|---|---|---|"]
        lines += [f"| {row['text']} | {row['reconstruction'] or '(empty)'} | {row['role'] or ''} |" for row in self.rows]
        return "\n".join(lines)


def run_probes(compressor: EosCompressor, texts: Sequence[ProbeText], *, model_name: str = "",
               max_new_tokens: int | None = None) -> FidelityReport:
    """Reconstruct every text and score what survived the compression."""
    if not texts:
        raise ValueError("no texts to probe")
    rows, references, hypotheses = [], [], []
    exact, nlls, entropies = [], [], []
    entity_hits, number_hits = [], []
    roles = {"preserved": 0, "swapped": 0, "lost": 0}
    tokenizer = compressor.vlm.tokenizer
    for probe in texts:
        result = compressor.reconstruct(probe.text, max_new_tokens)
        reference_ids = tokenizer(probe.text, add_special_tokens=False)["input_ids"]
        references.append(metrics.words(probe.text))
        hypotheses.append(metrics.words(result.text))
        exact.append(metrics.exact_token_recovery(reference_ids, result.token_ids))
        nlls.append(result.nll)
        entropies.extend(result.step_entropies)
        kept_entities = metrics.preserved(probe.entities, result.text)
        kept_numbers = metrics.preserved(probe.numbers, result.text)
        entity_hits += kept_entities
        number_hits += kept_numbers
        outcome = None
        if probe.roles is not None:
            outcome = metrics.role_outcome(probe.roles.agent, probe.roles.action, probe.roles.patient, result.text)
            roles[outcome] += 1
        rows.append({"text": probe.text, "reconstruction": result.text,
                     "bleu": metrics.corpus_bleu([references[-1]], [hypotheses[-1]]),
                     "exact_token_recovery": exact[-1], "nll": result.nll,
                     "entities_kept": sum(kept_entities), "entities": len(probe.entities),
                     "numbers_kept": sum(kept_numbers), "numbers": len(probe.numbers), "role": outcome})
    vectors = compressor.embed([probe.text for probe in texts])
    swap_cosine = None
    with_roles = [p for p in texts if p.roles is not None]
    if with_roles:
        originals = compressor.embed([p.text for p in with_roles])
        swapped = compressor.embed([metrics.swap_roles(p.text, p.roles.agent, p.roles.patient)
                                    for p in with_roles if p.roles is not None])
        cosines = (originals * swapped).sum(1) / (np.linalg.norm(originals, axis=1) * np.linalg.norm(swapped, axis=1))
        swap_cosine = float(np.mean(cosines))
    return FidelityReport(
        model=model_name or compressor.vlm.source,
        texts=len(texts),
        bleu=metrics.corpus_bleu(references, hypotheses),
        exact_token_recovery=float(np.mean(exact)),
        reconstruction_nll=float(np.mean(nlls)),
        entity_preservation=float(np.mean(entity_hits)) if entity_hits else None,
        number_preservation=float(np.mean(number_hits)) if number_hits else None,
        roles=roles,
        swap_cosine=swap_cosine,
        effective_rank=metrics.effective_rank(vectors),
        effective_rank_centered=metrics.effective_rank(vectors, center=True),
        mean_decoding_entropy=float(np.mean(entropies)) if entropies else 0.0,
        rows=rows,
    )
