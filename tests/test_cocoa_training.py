"""CoCoA stages 1-3 on tiny random-init Qwen2-VL and Qwen2.5-VL models: losses fall, checkpoints reload to
identical embeddings and resume exactly, LoRA works, vectors go through the shared index code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.data import ContrastivePair, read_contrastive_pairs, read_pretrain_records
from embedkit.cocoa.trainer import BatchSampler, CocoaTrainer, latest_checkpoint
from embedkit.data import Document
from embedkit.errors import DataFormatError
from embedkit.index import Index, write_dense_index
from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig
from embedkit.multimodal.loading import load_vlm
from embedkit.multimodal.sequence import MultimodalInput
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 40, 230), "yellow": (230, 220, 20)}


def image(colour):
    return Image.new("RGB", (16, 16), COLOURS[colour])


RECORDS = [MultimodalInput(text=f"a {c} square", image=image(c)) for c in COLOURS] + [
    MultimodalInput(text="Alice hit Bob"), MultimodalInput(image=image("red"))]
PAIRS = [ContrastivePair(MultimodalInput(text=f"a {c} square"), MultimodalInput(image=image(c)),
                         [MultimodalInput(image=image(other))])
         for c, other in zip(COLOURS, list(COLOURS)[1:] + ["red"], strict=True)]


def make_config(model_path, out, s1=4, s2=4, s3=4, **sections) -> CocoaConfig:
    raw = {"model": {"name_or_path": str(model_path), "max_length": 32},
           "stage1": {"steps": s1, "learning_rate": 3e-3}, "stage2": {"steps": s2, "learning_rate": 3e-3},
           "stage3": {"steps": s3, "learning_rate": 2e-3, "hard_negatives": 1, "temperature": 0.05},
           "optim": {"batch_size": 6}, "run": {"output_dir": str(out), "save_every": 100, "device": "cpu"}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return CocoaConfig.model_validate(raw)


def first_last(result):
    return result.losses[0]["loss"], result.losses[-1]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_three_stages_learn_save_reload_and_index(family, tmp_path):
    config = make_config(cached_tiny_vlm(family), tmp_path / "run", optim={"batch_size": 6})
    pre = CocoaTrainer(config)
    pretrained = pre.pretrain(RECORDS)
    stage1, stage2 = pre.history
    assert {"text", "image"} <= set(stage1.losses[0]) and {"text", "image"} <= set(stage2.losses[0])
    for result in (stage1, stage2):
        first, last = first_last(result)
        assert last < first, (result.stage, result.losses)

    trainer = CocoaTrainer(config.with_overrides({"optim.batch_size": 4}), init=pretrained)
    final = trainer.contrastive(PAIRS)
    first, last = first_last(trainer.history[-1])
    assert last < first * 0.8, trainer.history[-1].losses

    documents = [MultimodalInput(image=image(c)) for c in COLOURS]
    in_memory = trainer.embedder().encode(documents)
    reloaded = MultimodalEmbedder(MultimodalEmbedderConfig(model=str(final), device="cpu"))
    np.testing.assert_array_equal(reloaded.encode(documents), in_memory)
    assert json.loads((final / "embedkit_embedder.json").read_text())["content_attention"] == "causal"
    history = json.loads((final / "cocoa_history.json").read_text())
    assert [entry["stage"] for entry in history] == ["stage3"]

    out = write_dense_index(tmp_path / "index", in_memory, [Document(id=c, text=f"{c} square") for c in COLOURS],
                            reloaded.spec(), factory="Flat")
    hits = Index.load(out).search_vectors(in_memory, k=2)
    assert [h[0].id for h in hits] == list(COLOURS)
    assert Index.load(out).manifest.encoder.family == "qwen-vl"
    # A text query through the generic search path rebuilds the multimodal embedder from the manifest.
    text_hits = Index.load(out, device="cpu").search(["a red square"], k=3)[0]
    expected = Index.load(out).search_vectors(reloaded.encode_queries(["a red square"]), k=3)[0]
    assert [h.id for h in text_hits] == [h.id for h in expected]


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tmp_path):
    model = cached_tiny_vlm("qwen2-vl")
    # The interruption is simulated by a shorter run, so the schedule must not depend on the length.
    optim = {"batch_size": 3, "lr_schedule": "constant"}
    straight = CocoaTrainer(make_config(model, tmp_path / "a", s3=4, optim=optim))
    straight.contrastive(PAIRS)
    expected = straight.embedder().encode([p.positive for p in PAIRS])

    interrupted = CocoaTrainer(make_config(model, tmp_path / "b", s3=2, optim=optim, run={"save_every": 1}))
    interrupted.contrastive(PAIRS)
    assert latest_checkpoint(tmp_path / "b" / "contrastive").name == "checkpoint-stage3-000002"
    resumed = CocoaTrainer(make_config(model, tmp_path / "b", s3=4, optim=optim))
    resumed.contrastive(PAIRS)
    assert [entry["step"] for entry in resumed.history[-1].losses] == [3, 4]
    np.testing.assert_allclose(resumed.embedder().encode([p.positive for p in PAIRS]), expected, atol=1e-5)
    straight_losses = [entry["loss"] for entry in straight.history[-1].losses[2:]]
    np.testing.assert_allclose([entry["loss"] for entry in resumed.history[-1].losses], straight_losses, rtol=1e-4)


@pytest.mark.slow
def test_lora_with_gradient_checkpointing_trains_adapters_and_exports_merged(tmp_path):
    model = cached_tiny_vlm("qwen2-vl")
    config = make_config(model, tmp_path / "lora", s3=3, model={"lora": {"r": 4, "alpha": 8},
                                                                "gradient_checkpointing": True})
    trainer = CocoaTrainer(config)
    final = trainer.contrastive(PAIRS)
    trainable = [name for name, p in trainer.vlm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(".visual." in name for name in trainable)
    first, last = first_last(trainer.history[-1])
    assert last < first
    inputs = [p.query for p in PAIRS]
    merged = MultimodalEmbedder(MultimodalEmbedderConfig(model=str(final), device="cpu")).encode(inputs)
    np.testing.assert_allclose(merged, trainer.embedder().encode(inputs), atol=1e-5)
    base = MultimodalEmbedder(MultimodalEmbedderConfig(model=str(model), device="cpu")).encode(inputs)
    assert not np.allclose(merged, base, atol=1e-4)


@pytest.mark.slow
def test_bf16_mixed_precision_step_runs_on_cpu(tmp_path):
    config = make_config(cached_tiny_vlm("qwen2.5-vl"), tmp_path / "bf16", s1=1, s2=1,
                         run={"mixed_precision": "bf16"})
    trainer = CocoaTrainer(config)
    trainer.pretrain(RECORDS[:3])
    assert all(np.isfinite(r.losses[0]["loss"]) for r in trainer.history)


def test_batch_sampler_is_deterministic_and_covers_epochs():
    sampler = BatchSampler(size=10, batch_size=4, seed=3)
    first_epoch = sampler.batch(0) + sampler.batch(1) + sampler.batch(2)[:2]
    assert sorted(first_epoch) == list(range(10))
    assert sampler.batch(5) == BatchSampler(10, 4, 3).batch(5)
    ranks = [BatchSampler(10, 2, 3, rank, 2).batch(0) for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(sampler.batch(0))


def test_data_readers(tmp_path):
    pre = tmp_path / "pre.jsonl"
    pre.write_text('{"text": "a red square", "image": "a.png"}\n{"caption": "only text"}\n\n{"img_path": "b.png"}\n')
    records = read_pretrain_records(pre)
    assert [(r.text, r.image) for r in records] == [("a red square", "a.png"), ("only text", None), (None, "b.png")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"qry": "<|image_1|>\nRepresent the given image.", "qry_image_path": "q.png",
                                 "pos_text": "a cat", "pos_image_path": "", "neg_text": ["a dog", "a cow"]}) + "\n")
    [pair] = read_contrastive_pairs(pairs)
    assert pair.query.text == "Represent the given image." and pair.query.image == "q.png"
    assert pair.positive.text == "a cat" and pair.positive.image is None
    assert [n.text for n in pair.negatives] == ["a dog", "a cow"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qry": "x", "pos_text": "y"}\n{"qry": "x"}\n')
    with pytest.raises(DataFormatError, match="bad.jsonl, line 2"):
        read_contrastive_pairs(bad)
    with pytest.raises(DataFormatError, match="line 1"):
        (tmp_path / "broken.jsonl").write_text("{nope\n")
        read_pretrain_records(tmp_path / "broken.jsonl")


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: x\nstage3:\n  temperature: -1\n")
    with pytest.raises(DataFormatError, match="stage3.temperature"):
        CocoaConfig.from_yaml(path)


def test_mask_token_is_added_when_the_tokenizer_lacks_it(tmp_path):
    vlm = load_vlm(cached_tiny_vlm("qwen2-vl"))
    config = make_config(cached_tiny_vlm("qwen2-vl"), tmp_path, model={"mask_token": "<|my_mask|>"})
    trainer = CocoaTrainer(config, loaded=vlm)
    assert trainer.tokens.mask == vlm.tokenizer.convert_tokens_to_ids("<|my_mask|>")
    assert vlm.model.get_input_embeddings().num_embeddings >= len(vlm.tokenizer)
