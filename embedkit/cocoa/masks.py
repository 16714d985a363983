"""The attention masks of every CoCoA stage, built by one function from per-token segment labels.

`build_attention_mask(segments, stage)` returns `allowed[b, i, j]` = token i may attend to token j.

Rules shared by all stages:
- padding is invisible: no real token attends to a PAD token; a PAD query attends only to itself (its
  output is never used; one visible key keeps the softmax finite);
- every real token attends to itself.

Per stage:
- `bidirectional` (stage 1, warm-up): every real token attends to every real token (stage 1 can also
  run under `causal`, its `attention` setting).
- `eos_bridge` (stage 2): content tokens (instruction, text, vision marks, image) attend to content
  (causally, or all of it with `content_attention="bidirectional"`); <EOS> attends to all content; the
  DECODER_START token after <EOS> and every TARGET (text to reconstruct) attend to <EOS>, to the
  decoder-start token and to earlier TARGET tokens, never to content, so everything they know about the
  input passes through <EOS>'s keys and values (the LM head never reads <EOS>'s own state); a
  TARGET_IMAGE slot attends to <EOS> and to the image slots (all of them, or earlier ones with
  `image_slot_attention="causal"`).
- `eos_readout` (stage 2's second pass with `bridge: final`): the decoder-start token, targets and slots
  as in `eos_bridge`; <EOS> and content tokens see only themselves, so <EOS>'s input (the final-layer
  embedding from the first pass) is all the decoder can read of the content.
- `causal` (stage 3 and inference): token i attends to real tokens j <= i (VLM2Vec's recipe), or to all
  real tokens with `content_attention="bidirectional"`.
"""

from __future__ import annotations

from typing import Literal

from embedkit.errors import EmbedkitError
from embedkit.multimodal.sequence import CONTENT_SEGMENTS, Segment

Stage = Literal["bidirectional", "eos_bridge", "eos_readout", "causal"]
Attention = Literal["causal", "bidirectional"]
STAGES: tuple[str, ...] = ("bidirectional", "eos_bridge", "eos_readout", "causal")


def _is(segments, *kinds: Segment):
    import torch

    result = torch.zeros_like(segments, dtype=torch.bool)
    for kind in kinds:
        result |= segments == int(kind)
    return result


def build_attention_mask(
    segments,
    stage: Stage,
    *,
    content_attention: Attention = "causal",
    image_slot_attention: Attention = "bidirectional",
):
    """Boolean [B, L, L] mask from [B, L] `Segment` labels: True where query i may attend to key j."""
    import torch

    if stage not in STAGES:
        raise EmbedkitError(f"unknown attention stage {stage!r}; choose one of {', '.join(STAGES)}")
    if segments.dim() == 1:
        segments = segments.unsqueeze(0)
    length = segments.shape[1]
    real = ~_is(segments, Segment.PAD)
    pair_real = real[:, :, None] & real[:, None, :]
    earlier = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()[None]
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    has_target = bool(_is(segments, Segment.TARGET, Segment.TARGET_IMAGE, Segment.DECODER_START).any())

    if stage == "bidirectional":
        if has_target:
            raise EmbedkitError("stage-1 (bidirectional) sequences must not carry reconstruction targets")
        allowed = pair_real.clone()
    elif stage == "causal":
        if has_target:
            raise EmbedkitError("causal (stage-3) sequences must not carry reconstruction targets")
        allowed = pair_real & (earlier if content_attention == "causal" else True)
    else:  # eos_bridge, eos_readout
        content = _is(segments, *CONTENT_SEGMENTS)
        eos = _is(segments, Segment.EOS)
        target = _is(segments, Segment.TARGET)
        start = _is(segments, Segment.DECODER_START)
        decoder = target | start
        slot = _is(segments, Segment.TARGET_IMAGE)
        q = lambda mask: mask[:, :, None]  # noqa: E731 - query-side broadcast
        k = lambda mask: mask[:, None, :]  # noqa: E731 - key-side broadcast
        content_rule = earlier if content_attention == "causal" else torch.ones_like(earlier)
        slot_rule = earlier if image_slot_attention == "causal" else torch.ones_like(earlier)
        encoder = (q(content) & k(content) & content_rule) | (q(eos) & (k(content) | k(eos)) & earlier)
        if stage == "eos_readout":  # the encoder rows are not read; <EOS>'s input is the embedding itself
            encoder = torch.zeros_like(encoder)
        allowed = (
            encoder
            | (q(decoder) & (k(eos) | (k(decoder) & earlier)))
            | (q(slot) & (k(eos) | (k(slot) & slot_rule)))
        )
        allowed &= pair_real
    # Every token sees itself; PAD queries see only themselves.
    allowed = allowed | (eye & ~real[:, :, None]) | (eye & real[:, :, None])
    return allowed


def additive_mask(allowed, dtype):
    """The [B, 1, L, L] float mask transformers' attention adds to its scores (0 = attend)."""
    import torch

    blocked = torch.finfo(dtype).min
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, blocked).unsqueeze(1)


SEGMENT_CODES = {
    Segment.PAD: ".",
    Segment.INSTRUCTION: "I",
    Segment.TEXT: "T",
    Segment.VISION_MARK: "V",
    Segment.IMAGE: "P",
    Segment.EOS: "E",
    Segment.TARGET: "R",
    Segment.TARGET_IMAGE: "Q",
    Segment.DECODER_START: "D",
}


def render_mask(allowed_row, segments_row, labels: list[str] | None = None) -> str:
    """A text picture of one sequence's mask: row i marks with '#' the keys token i attends to."""
    length = len(segments_row)
    codes = [SEGMENT_CODES[Segment(int(s))] for s in segments_row]
    labels = labels or [""] * length
    width = max((len(label) for label in labels), default=0)
    lines = ["segments: " + " ".join(f"{code}={Segment(code_id).name}" for code_id, code in
                                     ((int(s), SEGMENT_CODES[s]) for s in Segment))]
    lines.append(" " * (width + 9) + "".join(codes))
    for i in range(length):
        cells = "".join("#" if bool(allowed_row[i, j]) else "." for j in range(length))
        lines.append(f"{i:3d} {codes[i]} {labels[i]:>{width}} |{cells}")
    return "\n".join(lines)


def plot_mask(allowed_row, segments_row, path, labels: list[str] | None = None, title: str = "") -> None:
    """Save the mask of one sequence as a PNG (rows: queries, columns: keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embedkit.io import atomic_write

    length = len(segments_row)
    names = [f"{SEGMENT_CODES[Segment(int(s))]} {lab}" for s, lab in
             zip(segments_row, labels or [""] * length, strict=True)]
    size = max(4.0, length * 0.28)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(allowed_row.cpu().numpy().astype(float), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(length), names, rotation=90, fontsize=7)
    ax.set_yticks(range(length), names, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
