"""The loss of each CoCoA stage for one batch.

Stage 1 (`warmup_loss`): bidirectional (or causal) attention; masked text tokens are predicted (MNTP or MLM)
and masked image tokens regress their patches' pixels (or the vision tower's features) through a linear
head. Image tokens are masked before the vision encoder: their patches are replaced by a learned mask
patch, so the tower's own attention cannot carry the masked content into neighbouring tokens.
Stage 2 (`bridge_loss`): `content <EOS> <DEC> target`, where the decoder-start token and the target see
the content only through <EOS> (by default its final-layer state, the embedding, fed back in a second
pass; `bridge: layerwise` reads its keys and values at every layer of one pass); the first target token is predicted from <DEC>'s state,
never from <EOS>'s (the embedding itself is not trained as an LM-head input); image query slots regress
the image's patches.
Stage 3 (`contrastive_loss`): InfoNCE over <EOS> embeddings with in-batch and hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.cocoa.config import Stage1Settings, Stage2Settings, Stage3Settings
from embedkit.cocoa.masks import Attention, Stage, build_attention_mask
from embedkit.errors import EmbedkitError
from embedkit.multimodal.forward import ForwardOutput, forward_hidden, image_features, lm_logits
from embedkit.multimodal.loading import unwrap
from embedkit.multimodal.sequence import EncodedBatch, MultimodalInput, Segment


class ReconstructionHeads(nn.Module):
    """Linear heads from hidden states to image targets (pixels of the merged patches, or features)."""

    def __init__(self, hidden_size: int, pixel_dim: int, patch_dim: int | None = None) -> None:
        super().__init__()
        self.pixels = nn.Linear(hidden_size, pixel_dim)
        self.features = nn.Linear(hidden_size, hidden_size)
        # The vision-encoder input that replaces a masked patch (SimMIM-style learned mask patch).
        self.mask_patch = nn.Parameter(torch.zeros(patch_dim or pixel_dim))

    @classmethod
    def for_model(cls, model, image_processor) -> ReconstructionHeads:
        config = unwrap(model).config
        merge = image_processor.merge_size
        patch = image_processor.patch_size
        patch_dim = 3 * image_processor.temporal_patch_size * patch * patch
        return cls(config.text_config.hidden_size, merge * merge * patch_dim, patch_dim)


@dataclass
class StepLoss:
    total: torch.Tensor
    parts: dict[str, float]


def pixel_targets(batch: EncodedBatch, merge_size: int) -> torch.Tensor:
    """One row per image token: its merge x merge patches' pixels, normalised per token (MAE's norm_pix)."""
    per_token = batch.pixel_values.reshape(-1, merge_size * merge_size * batch.pixel_values.shape[-1]).float()
    mean = per_token.mean(dim=-1, keepdim=True)
    std = per_token.std(dim=-1, keepdim=True)
    return (per_token - mean) / (std + 1e-6)


def _image_targets(kind: str, batch: EncodedBatch, features, merge_size: int) -> torch.Tensor:
    if kind == "pixels":
        return pixel_targets(batch, merge_size)
    return features.detach().float()


def mask_pixels(pixel_values: torch.Tensor, tokens: torch.Tensor, merge_size: int,
                mask_patch: torch.Tensor) -> torch.Tensor:
    """Replace the patches of the merged image tokens `tokens` by `mask_patch` (the processor lays out
    each merged token's merge x merge patches consecutively)."""
    group = merge_size * merge_size
    rows = torch.zeros(pixel_values.shape[0], dtype=torch.bool, device=pixel_values.device)
    starts = tokens.to(pixel_values.device) * group
    for offset in range(group):
        rows[starts + offset] = True
    patch = mask_patch.to(pixel_values.dtype).expand(int(rows.sum()), -1)
    return pixel_values.masked_scatter(rows[:, None].expand_as(pixel_values), patch)


def warmup_loss(model, heads: ReconstructionHeads, batch: EncodedBatch, settings: Stage1Settings,
                mask_token_id: int, merge_size: int, generator: torch.Generator) -> StepLoss:
    """Stage 1: masked-token and masked-patch reconstruction under bidirectional attention."""
    device = batch.input_ids.device
    segments = batch.segments
    text = segments == int(Segment.TEXT)
    if settings.text_objective == "mntp":
        # The token before a masked one predicts it, so the first text token needs a real predecessor.
        has_before = torch.zeros_like(text)
        has_before[:, 1:] = segments[:, :-1] != int(Segment.PAD)
        text &= has_before
    draws = torch.rand(segments.shape, generator=generator).to(device)
    masked_text = text & (draws < settings.text_mask_prob)
    image = segments == int(Segment.IMAGE)
    masked_image = image & (draws < settings.image_mask_prob)
    if settings.text_weight > 0 and text.any() and not masked_text.any():
        masked_text[text.nonzero()[0].unbind()] = True  # at least one prediction per batch
    if settings.image_weight > 0 and image.any() and not masked_image.any():
        masked_image[image.nonzero()[0].unbind()] = True

    original_ids = batch.input_ids
    inputs = EncodedBatch(**{**batch.__dict__, "input_ids": original_ids.masked_fill(masked_text, mask_token_id)})
    replace = None
    token_rank = image.flatten().cumsum(0).reshape(image.shape) - 1  # index among image tokens
    clean_features = None
    if masked_image.any() and settings.image_mask_at == "pixels":
        inputs.pixel_values = mask_pixels(batch.pixel_values, token_rank[masked_image], merge_size,
                                          heads.mask_patch)
        if settings.image_target == "features":  # the target is what the tower makes of the clean image
            with torch.no_grad():
                clean_features = image_features(model, batch)
    elif masked_image.any():
        embed = unwrap(model).model.get_input_embeddings()
        mask_vector = embed(torch.tensor([mask_token_id], device=device))
        replace = (masked_image, mask_vector.expand(int(masked_image.sum()), -1))
    allowed = build_attention_mask(segments, "bidirectional" if settings.attention == "bidirectional" else "causal")
    out = forward_hidden(model, inputs, allowed, replace=replace)

    parts: dict[str, float] = {}
    total = out.hidden.new_zeros((), dtype=torch.float32)
    if masked_text.any() and settings.text_weight > 0:
        if settings.text_objective == "mntp":
            source = torch.zeros_like(masked_text)
            source[:, :-1] = masked_text[:, 1:]
            hidden = out.hidden[source]
        else:
            hidden = out.hidden[masked_text]
        text_loss = F.cross_entropy(lm_logits(model, hidden).float(), original_ids[masked_text])
        total = total + settings.text_weight * text_loss
        parts["text"] = float(text_loss.detach())
    if masked_image.any() and settings.image_weight > 0:
        features = clean_features if clean_features is not None else out.image_features
        targets = _image_targets(settings.image_target, batch, features, merge_size)
        chosen = token_rank[masked_image]
        head = heads.pixels if settings.image_target == "pixels" else heads.features
        predicted = head(out.hidden[masked_image].float())
        image_loss = F.mse_loss(predicted, targets[chosen])
        total = total + settings.image_weight * image_loss
        parts["image"] = float(image_loss.detach())
    parts["loss"] = float(total.detach())
    return StepLoss(total, parts)


def stage2_inputs(items: list[MultimodalInput], settings: Stage2Settings
                  ) -> tuple[list[MultimodalInput], list[str | None] | None]:
    """The content each record is encoded with and the text it must be reconstructed into.

    The target is the record's text (`text_target: text`) or its `description`. With `remove_caption`,
    a record that has an image is encoded from the image alone, so its caption (or its description's
    source) cannot be copied from visible content: it has to travel through <EOS>.
    """
    if not settings.reconstruct_text:
        return list(items), None
    content, targets = [], []
    for item in items:
        target = item.text if settings.text_target == "text" else item.description
        if settings.remove_caption and item.image is not None and item.text is not None:
            item = item.model_copy(update={"text": None})
        content.append(item)
        targets.append(target)
    return content, targets


def bridge_forward(model, batch: EncodedBatch, *, bridge: str = "final", content_attention: Attention = "causal",
                   image_slot_attention: Attention = "bidirectional") -> ForwardOutput:
    """Hidden states of `content <EOS> <DEC> target [slots]` where the decoder side knows the content only
    through <EOS>.

    `layerwise`: one pass under the `eos_bridge` mask; the decoder reads <EOS>'s keys and values at every
    layer, which come from each layer's input, so the final-layer <EOS> state is in no loss.
    `final`: the first pass encodes the content; its final-layer <EOS> state (the embedding stage 3 and
    inference pool) becomes <EOS>'s input embedding in a second pass under `eos_readout`, where <EOS> sees
    only itself. The decoder's loss then depends on the content through that one vector only.
    """
    segments = batch.segments
    def mask(stage: Stage) -> torch.Tensor:
        return build_attention_mask(segments, stage, content_attention=content_attention,
                                    image_slot_attention=image_slot_attention)

    encoded = forward_hidden(model, batch, mask("eos_bridge"))
    if bridge == "layerwise":
        return encoded
    if bridge != "final":
        raise EmbedkitError(f"unknown stage-2 bridge {bridge!r}; choose final or layerwise")
    eos = segments == int(Segment.EOS)
    embedding = encoded.hidden[eos]
    readout = forward_hidden(model, batch, mask("eos_readout"),
                             replace=(eos, embedding))
    return ForwardOutput(hidden=readout.hidden, image_features=encoded.image_features)


def bridge_loss(model, heads: ReconstructionHeads, batch: EncodedBatch, settings: Stage2Settings,
                merge_size: int) -> StepLoss:
    """Stage 2: reconstruct the input from <EOS> alone (the mask truncates every other path)."""
    segments = batch.segments
    out = bridge_forward(model, batch, bridge=settings.bridge, content_attention=settings.content_attention,
                         image_slot_attention=settings.image_slot_attention)
    parts: dict[str, float] = {}
    total = out.hidden.new_zeros((), dtype=torch.float32)
    target = segments == int(Segment.TARGET)
    if settings.reconstruct_text and target.any() and settings.text_weight > 0:
        source = torch.zeros_like(target)
        source[:, :-1] = target[:, 1:]  # <DEC> predicts the first target token, each target the next
        if bool((segments[source] == int(Segment.EOS)).any()):
            raise EmbedkitError("stage 2 would train <EOS>'s state as an LM-head input; the sequences need "
                                "a decoder-start token after <EOS> (stage2.decoder_start_token)")
        logits = lm_logits(model, out.hidden[source]).float()
        text_loss = F.cross_entropy(logits, batch.input_ids[target])
        total = total + settings.text_weight * text_loss
        parts["text"] = float(text_loss.detach())
    slots = segments == int(Segment.TARGET_IMAGE)
    if settings.reconstruct_image and slots.any() and settings.image_weight > 0:
        # Slots follow the image tokens one to one, row by row, so boolean gathers line them up.
        targets = _image_targets(settings.image_target, batch, out.image_features, merge_size)
        head = heads.pixels if settings.image_target == "pixels" else heads.features
        image_loss = F.mse_loss(head(out.hidden[slots].float()), targets)
        total = total + settings.image_weight * image_loss
        parts["image"] = float(image_loss.detach())
    parts["loss"] = float(total.detach())
    return StepLoss(total, parts)


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, temperature: float, *,
             allowed: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """InfoNCE where query i's positive is candidate offset + i; `allowed` [Q, C] hides candidates (False)."""
    scores = queries @ candidates.T / temperature
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    labels = torch.arange(queries.shape[0], device=queries.device) + offset
    return F.cross_entropy(scores, labels)


def contrastive_loss(query_vectors: torch.Tensor, positive_vectors: torch.Tensor,
                     negative_vectors: torch.Tensor | None, negative_owner: list[int],
                     settings: Stage3Settings, *, positive_offset: int = 0) -> StepLoss:
    """Stage 3: queries against [positives; hard negatives]; `negative_owner[n]` = query of negative n.

    `positive_vectors` may hold more rows than there are queries (other processes' positives, gathered):
    query i's positive is then row `positive_offset + i`.
    """
    candidates = positive_vectors
    n_query = query_vectors.shape[0]
    n_positive = positive_vectors.shape[0]
    if negative_vectors is not None and len(negative_owner):
        candidates = torch.cat([positive_vectors, negative_vectors])
    allowed = None
    rows = torch.arange(n_query, device=candidates.device)
    if not settings.in_batch_negatives:
        allowed = torch.zeros((n_query, candidates.shape[0]), dtype=torch.bool, device=candidates.device)
        allowed[rows, rows + positive_offset] = True
        for column, owner in enumerate(negative_owner):
            allowed[owner, n_positive + column] = True
    loss = info_nce(query_vectors, candidates, settings.temperature, allowed=allowed, offset=positive_offset)
    parts = {"query_to_target": float(loss.detach())}
    if settings.symmetric:
        own = positive_vectors[positive_offset: positive_offset + n_query]
        backward = info_nce(own, query_vectors, settings.temperature)
        parts["target_to_query"] = float(backward.detach())
        loss = (loss + backward) / 2
    parts["loss"] = float(loss.detach())
    return StepLoss(loss, parts)
