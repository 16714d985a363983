"""One forward pass of a Qwen2-VL / Qwen2.5-VL language model under an arbitrary attention mask.

transformers' own forward builds a causal mask; CoCoA needs other masks, so this module assembles the
input embeddings (tokens, with vision-tower outputs scattered into the <|image_pad|> slots), the M-RoPE
positions, and passes a ready 4D mask, which transformers uses as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedkit.multimodal.loading import unwrap
from embedkit.multimodal.sequence import EncodedBatch, Segment


@dataclass
class ForwardOutput:
    hidden: Any  # [B, L, H] last hidden states
    image_features: Any = None  # [num_image_tokens, H] vision-tower outputs, in sequence order


def image_features(model, batch: EncodedBatch):
    """Merged vision-tower outputs for every <|image_pad|> token of the batch, in order."""
    import torch

    inner = unwrap(model).model
    out = inner.get_image_features(batch.pixel_values, batch.image_grid_thw, return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)


def position_ids(model, batch: EncodedBatch):
    """M-RoPE positions [3, B, L]: text advances by one, image tokens get (t, h, w) grid positions."""
    inner = unwrap(model).model
    positions, _ = inner.get_rope_index(
        batch.input_ids,
        mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=batch.image_grid_thw,
        attention_mask=batch.attention_mask,
    )
    return positions


def forward_hidden(model, batch: EncodedBatch, allowed, *, replace=None) -> ForwardOutput:
    """Last hidden states of `batch` under the boolean [B, L, L] mask `allowed`.

    `replace` is an optional (bool [B, L], embeddings [N, H]) pair: the embeddings put in those slots
    after the image features (stage 1 masks image patches and text tokens this way).
    """
    from embedkit.cocoa.masks import additive_mask

    base = unwrap(model)
    inner = base.model
    embeds = inner.get_input_embeddings()(batch.input_ids)
    feats = None
    if batch.has_images:
        feats = image_features(model, batch).to(embeds.dtype)
        slots = (batch.segments == int(Segment.IMAGE)).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, feats)
    if replace is not None:
        where, values = replace
        embeds = embeds.masked_scatter(where.unsqueeze(-1).expand_as(embeds), values.to(embeds.dtype))
    out = inner.language_model(
        input_ids=None,
        inputs_embeds=embeds,
        attention_mask=additive_mask(allowed, embeds.dtype),
        position_ids=position_ids(model, batch),
        use_cache=False,
    )
    return ForwardOutput(hidden=out.last_hidden_state, image_features=feats)


def lm_logits(model, hidden):
    """Vocabulary logits from hidden states, through the model's LM head."""
    return unwrap(model).lm_head(hidden)
