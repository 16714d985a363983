"""CoCoA without shortcuts: a decoder-start token after <EOS> (the embedding is read only through
attention), reconstruction targets that are not visible in the content, stage-1 image masking before
the vision encoder, attention flow per stage, image/token budgets, the LR schedule, and GradCache
in-batch negatives that grow with gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from embedkit.cocoa.config import CocoaConfig, Stage2Settings
from embedkit.cocoa.data import ContrastivePair, read_pretrain_records
from embedkit.cocoa.masks import build_attention_mask
from embedkit.cocoa.objectives import bridge_loss, mask_pixels, stage2_inputs
from embedkit.cocoa.trainer import CocoaTrainer, lr_factor
from embedkit.errors import EmbedkitError
from embedkit.multimodal.forward import forward_hidden, image_features
from embedkit.multimodal.loading import load_vlm
from embedkit.multimodal.sequence import MultimodalInput, Segment, VisionTokens, encode_batch
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)
CONTENT = [int(s) for s in (Segment.INSTRUCTION, Segment.TEXT, Segment.VISION_MARK, Segment.IMAGE)]


def square(rgb, size=16):
    return Image.new("RGB", (size, size), rgb)


def noisy(seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def vlm():
    return load_vlm(cached_tiny_vlm("qwen2-vl"))


@pytest.fixture(scope="module")
def one_layer():
    return load_vlm(cached_tiny_vlm("qwen2-vl", layers=1))


def tokens_of(loaded) -> VisionTokens:
    return VisionTokens.from_tokenizer(loaded.tokenizer, "<|endoftext|>", "<|mask|>", "<|im_start|>")


def encode(loaded, items, **kwargs):
    return encode_batch(items, loaded.tokenizer, loaded.image_processor, tokens_of(loaded), max_length=48, **kwargs)


def test_decoder_start_token_sits_after_eos_and_opens_the_target(vlm):
    batch = encode(vlm, [MultimodalInput(text="a red circle")], targets=["the red star"], padding_side="right")
    segments = batch.segments[0].tolist()
    eos = segments.index(int(Segment.EOS))
    assert segments[eos + 1] == int(Segment.DECODER_START)
    assert batch.input_ids[0, eos + 1] == vlm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    target_ids = vlm.tokenizer("the red star", add_special_tokens=False)["input_ids"]
    n = len(target_ids)
    assert batch.input_ids[0, eos + 2: eos + 2 + n].tolist() == target_ids
    assert segments[eos + 2: eos + 3 + n] == [int(Segment.TARGET)] * (n + 1)  # closed by <EOS>
    with pytest.raises(EmbedkitError, match="differ"):
        VisionTokens.from_tokenizer(vlm.tokenizer, "<|endoftext|>", None, "<|endoftext|>")


def test_target_and_decoder_start_never_attend_to_content(vlm):
    items = [MultimodalInput(text="a blue square", image=square((20, 40, 230))), MultimodalInput(text="Alice hit Bob")]
    content, targets = stage2_inputs(items, Stage2Settings())
    batch = encode(vlm, content, targets=targets, image_target_slots=True)
    allowed = build_attention_mask(batch.segments, "eos_bridge")
    segments = batch.segments
    is_content = torch.isin(segments, torch.tensor(CONTENT))
    decoder = (segments == int(Segment.TARGET)) | (segments == int(Segment.DECODER_START))
    for row in range(segments.shape[0]):
        rows = allowed[row][decoder[row]]
        assert not rows[:, is_content[row]].any()  # no decoder token sees any content token
        assert rows[:, segments[row] == int(Segment.EOS)].all()  # ... only <EOS>, the bridge
    # The caption of the image record is the target, and it is not in the content any more.
    assert int(Segment.TEXT) not in segments[0].tolist()
    caption = vlm.tokenizer("a blue square", add_special_tokens=False)["input_ids"]
    row0 = batch.input_ids[0][segments[0] == int(Segment.TARGET)].tolist()
    assert row0[: len(caption)] == caption
    # A text-only record keeps its text: autoencoding through <EOS> is the only way to reconstruct it.
    assert int(Segment.TEXT) in segments[1].tolist()


def test_target_reaches_the_content_only_through_eos(one_layer):
    """With one layer, <DEC>/target states see only <EOS>'s input embedding: they cannot depend on the
    content at all. (With more layers they do, through <EOS>'s states, which is the point.)"""
    model = one_layer.model
    outs = []
    for colour in ((230, 20, 20), (20, 40, 230)):
        batch = encode(one_layer, [MultimodalInput(image=square(colour))], targets=["a square"])
        allowed = build_attention_mask(batch.segments, "eos_bridge")
        with torch.no_grad():
            outs.append((batch.segments[0], forward_hidden(model, batch, allowed).hidden[0]))
    (segments, first), (_, second) = outs
    decoder = (segments == int(Segment.TARGET)) | (segments == int(Segment.DECODER_START))
    eos = segments == int(Segment.EOS)
    torch.testing.assert_close(first[decoder], second[decoder])
    assert not torch.allclose(first[eos], second[eos])  # the content does reach <EOS>


def test_stage2_refuses_to_train_eos_as_lm_head_input(vlm):
    plain = VisionTokens.from_tokenizer(vlm.tokenizer, "<|endoftext|>", "<|mask|>")  # no decoder start
    batch = encode_batch([MultimodalInput(text="a red circle")], vlm.tokenizer, vlm.image_processor, plain,
                         max_length=48, targets=["a red circle"])
    from embedkit.cocoa.objectives import ReconstructionHeads

    heads = ReconstructionHeads.for_model(vlm.model, vlm.image_processor)
    with pytest.raises(EmbedkitError, match="decoder-start"):
        bridge_loss(vlm.model, heads, batch, Stage2Settings(reconstruct_image=False), 2)


def test_description_target_with_the_caption_removed(tmp_path):
    path = tmp_path / "pre.jsonl"
    path.write_text('{"text": "cap", "image": "a.png", "description": "a wide red square"}\n{"text": "only"}\n')
    records = read_pretrain_records(path)
    assert records[0].description == "a wide red square"
    content, targets = stage2_inputs(records, Stage2Settings(text_target="description"))
    assert targets == ["a wide red square", None]
    assert content[0].text is None and content[0].image == "a.png" and content[1].text == "only"
    kept, _ = stage2_inputs(records, Stage2Settings(remove_caption=False))
    assert kept[0].text == "cap"


def test_stage1_masks_patches_before_the_vision_encoder(vlm):
    """Changing the pixels of a masked token changes nothing the model computes: the content is gone
    before the tower's attention could spread it to the other tokens."""
    from embedkit.cocoa.objectives import ReconstructionHeads

    heads = ReconstructionHeads.for_model(vlm.model, vlm.image_processor)
    merge = int(vlm.image_processor.merge_size)
    batches = [encode(vlm, [MultimodalInput(image=noisy(seed, 32))]) for seed in (1, 2)]
    group = merge * merge
    masked_token = torch.tensor([0])
    # Same pixels everywhere except in token 0's patches.
    batches[1].pixel_values[group:] = batches[0].pixel_values[group:]
    with torch.no_grad():
        masked = [image_features(vlm.model, type(b)(**{**b.__dict__, "pixel_values": mask_pixels(
            b.pixel_values, masked_token, merge, heads.mask_patch)})) for b in batches]
        clean = [image_features(vlm.model, b) for b in batches]
    torch.testing.assert_close(masked[0], masked[1])
    assert not torch.allclose(clean[0][1:], clean[1][1:])  # unmasked, token 0 leaks into its neighbours
    replaced = mask_pixels(batches[0].pixel_values, masked_token, merge, heads.mask_patch + 1.0)
    assert (replaced[:group] == 1.0).all() and torch.equal(replaced[group:], batches[0].pixel_values[group:])


def make_config(out, **sections) -> CocoaConfig:
    raw = {"model": {"name_or_path": str(cached_tiny_vlm("qwen2-vl")), "max_length": 32},
           "stage1": {"steps": 2, "learning_rate": 3e-3}, "stage2": {"steps": 2, "learning_rate": 3e-3},
           "stage3": {"steps": 2, "learning_rate": 2e-3},
           "optim": {"batch_size": 4}, "run": {"output_dir": str(out), "save_every": 100, "device": "cpu"}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return CocoaConfig.model_validate(raw)


RECORDS = [MultimodalInput(text=f"a {c} square", image=square(rgb), description=f"{c} colour")
           for c, rgb in (("red", (230, 20, 20)), ("blue", (20, 40, 230)), ("green", (20, 200, 20)))] + [
    MultimodalInput(text="Alice hit Bob")]
PAIRS = [ContrastivePair(MultimodalInput(text=f"a {c} square"), MultimodalInput(image=square(rgb)))
         for c, rgb in (("red", (230, 20, 20)), ("blue", (20, 40, 230)), ("green", (20, 200, 20)),
                        ("yellow", (230, 220, 20)))]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_attention_flow_of_every_stage_is_a_setting(tmp_path, vlm, attention):
    config = make_config(tmp_path, stage1={"attention": attention}, stage2={"content_attention": attention,
                         "text_target": "description"}, stage3={"content_attention": attention})
    trainer = CocoaTrainer(config, loaded=load_vlm(cached_tiny_vlm("qwen2-vl")))
    final = trainer.pretrain(RECORDS)
    assert all(math.isfinite(r.losses[-1]["loss"]) for r in trainer.history)
    assert "text" in trainer.history[1].losses[0]
    trainer = CocoaTrainer(config, init=final)
    trainer.contrastive(PAIRS)
    assert math.isfinite(trainer.history[-1].losses[-1]["loss"])
    # The saved embedder reads content with the stage-3 attention it was trained with.
    import json

    saved = json.loads((tmp_path / "contrastive" / "model" / "embedkit_embedder.json").read_text())
    assert saved["content_attention"] == attention
    mask = build_attention_mask(torch.tensor([[int(Segment.TEXT)] * 3 + [int(Segment.EOS)]]), "causal",
                                content_attention=attention)[0]
    assert bool(mask[0, 2]) == (attention == "bidirectional")


def test_images_fit_the_token_budget(vlm):
    big = square((10, 200, 30), size=96)
    factor = vlm.image_processor.patch_size * vlm.image_processor.merge_size
    for max_length in (24, 40):
        batch = encode_batch([MultimodalInput(text="a long caption " * 20, image=big)], vlm.tokenizer,
                             vlm.image_processor, tokens_of(vlm), max_length=max_length, text_reserve=8,
                             max_pixels=96 * 96)
        image_tokens = int((batch.segments == int(Segment.IMAGE)).sum())
        assert image_tokens <= max_length - 3 - 8
        assert int((batch.segments != int(Segment.PAD)).sum()) <= max_length
    capped = encode_batch([MultimodalInput(image=big)], vlm.tokenizer, vlm.image_processor, tokens_of(vlm),
                          max_length=200, max_pixels=4 * factor * factor)
    assert int((capped.segments == int(Segment.IMAGE)).sum()) <= 4
    with pytest.raises(EmbedkitError, match="no room"):
        encode_batch([MultimodalInput(image=big, instruction="x " * 30)], vlm.tokenizer, vlm.image_processor,
                     tokens_of(vlm), max_length=24)


def test_learning_rate_warms_up_then_decays():
    assert lr_factor(0, 2, 10, "cosine") == 0.5 and lr_factor(1, 2, 10, "cosine") == 1.0
    assert lr_factor(2, 2, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 0, 10, "constant") == 1.0


@pytest.mark.slow
def test_trainer_logs_a_decaying_learning_rate(tmp_path):
    config = make_config(tmp_path, stage3={"steps": 4}, optim={"batch_size": 2, "lr_schedule": "linear",
                                                               "warmup_steps": 1})
    trainer = CocoaTrainer(config)
    trainer.contrastive(PAIRS)
    lrs = [entry["lr"] for entry in trainer.history[-1].losses]
    assert lrs[0] == pytest.approx(2e-3) and lrs[1] > lrs[2] > lrs[3] >= 0


def test_grad_cache_equals_one_big_batch(tmp_path):
    """Two accumulated micro-batches of 2 with GradCache give the gradients of one batch of 4."""
    def gradients(micro_batches):
        config = make_config(tmp_path, stage3={"hard_negatives": 0, "temperature": 0.1},
                             optim={"batch_size": 2, "gradient_accumulation": 2})
        trainer = CocoaTrainer(config, loaded=load_vlm(cached_tiny_vlm("qwen2-vl")))
        trainer._prepare_model()
        model = trainer.vlm.model
        model.zero_grad()
        if len(micro_batches) == 1:
            result = trainer._stage3_step(micro_batches[0], torch.Generator())
            result.total.backward()
        else:
            result = trainer.cached_contrastive_backward(micro_batches)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(result.total.detach()), grads

    loss_big, big = gradients([PAIRS])
    loss_cached, cached = gradients([PAIRS[:2], PAIRS[2:]])
    assert loss_cached == pytest.approx(loss_big, rel=1e-5)
    assert set(big) == set(cached) and len(big) > 10
    for name in big:
        torch.testing.assert_close(cached[name], big[name], rtol=1e-4, atol=1e-6)


def test_real_model_loading_settings_are_checked():
    base = {"model": {"name_or_path": "x", "dtype": "bfloat16"}}
    with pytest.raises(ValueError, match="fp32 master"):
        CocoaConfig.model_validate(base)
    with_lora = CocoaConfig.model_validate({"model": {**base["model"], "lora": {"r": 4}}})
    assert with_lora.weights_dtype == "bfloat16"
    assert CocoaConfig.model_validate({"model": {"name_or_path": "x", "dtype": "auto"},
                                       "run": {"device": "cpu"}}).weights_dtype == "float32"
    with pytest.raises(ValueError, match="attn_implementation"):
        CocoaConfig.model_validate({"model": {"name_or_path": "x", "attn_implementation": "flash_attention_2"}})
