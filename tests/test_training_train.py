"""The real sentence-transformers trainer on tiny random models: strategies, losses, LoRA, decoders,
resume, and the saved model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedkit.training import TrainConfig, train
from embedkit.training.tiny import build_tiny_bert, write_vocab
from tests.helpers import TOPIC_TRIPLES

pytestmark = pytest.mark.slow  # training runs

QUERIES = TOPIC_TRIPLES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "m", seed=0, pooling="mean")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    first = root / "t1.jsonl"
    first.write_text("".join(json.dumps({"query": q, "pos": [p], "neg": [n]}) + "\n" for q, p, n in QUERIES))
    second = root / "t2.jsonl"
    second.write_text("".join(json.dumps({"query": p, "pos": [q]}) + "\n" for q, p, _ in QUERIES))
    return first, second


def config(tiny, data, out: Path, **overrides) -> TrainConfig:
    base = dict(
        model=str(tiny),
        output_dir=str(out),
        datasets=[
            {"name": "t1", "path": str(data[0]), "instruction": "find the passage", "stage": 1},
            {"name": "t2", "path": str(data[1]), "stage": 2},
        ],
        batch_size=3,
        learning_rate=1e-3,
        device="cpu",
        logging_steps=1,
        save_steps=1000,
    )
    base.update(overrides)
    return TrainConfig(**base)


def changed(before: Path, after: Path) -> float:
    a, b = load_file(str(before / "model.safetensors")), load_file(str(after / "model.safetensors"))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_batch_shuffle_trains_and_writes_card(tiny, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train(config(tiny, data, tmp_path / "out"), quiet=True)
    out = tmp_path / "out"
    assert changed(tiny, out) > 0
    assert result.rows == {"t1": 6, "t2": 6} and result.steps == 4  # one task per batch: 2 + 2 batches of 3
    record = json.loads((out / "embedkit_training.json").read_text())
    assert record["strategy"] == "batch_shuffle" and record["config"]["hard_negatives"] == 7
    card = (out / "README.md").read_text()
    assert "| t1 |" in card and "learning_rate: 0.001" in card
    model = SentenceTransformer(str(out), device="cpu")
    assert model.prompts["t1"] == "Instruct: find the passage\nQuery: "  # saved per task, survives merges
    assert not (tmp_path / "out.checkpoints").exists()  # removed after success unless keep_checkpoints


def test_two_stage_with_cached_loss(tiny, data, tmp_path):
    result = train(config(tiny, data, tmp_path / "two", strategy="two_stage", loss="cached_mnrl", mini_batch_size=2),
                   quiet=True)
    assert changed(tiny, tmp_path / "two") > 0
    assert result.steps == 4 and result.rows == {"t1": 6, "t2": 6}  # stage 1 (t1) then stage 2 (t2)


def test_resume_from_checkpoint(tiny, data, tmp_path):
    ckpt = tmp_path / "ckpt"
    train(config(tiny, data, tmp_path / "first", max_steps=2, save_steps=2, keep_checkpoints=True,
                 checkpoint_dir=str(ckpt), strategy="mixed"), quiet=True)
    # Same checkpoint folder, another learning rate: the resumed run continues at step 3, so its history
    # holds the first run's step-2 entry (learning rate 1e-3), which a fresh run would not.
    train(config(tiny, data, tmp_path / "second", max_steps=3, save_steps=3, keep_checkpoints=True,
                 checkpoint_dir=str(ckpt), strategy="mixed", learning_rate=0.5), quiet=True)
    state = json.loads((ckpt / "stage-0-all" / "checkpoint-3" / "trainer_state.json").read_text())
    steps = {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}
    assert sorted(steps) == [1, 2, 3]
    assert float(steps[2]["learning_rate"]) == pytest.approx(1e-3)
    assert float(steps[3]["learning_rate"]) != pytest.approx(1e-3)


def test_refuses_non_empty_output(tiny, data, tmp_path):
    from embedkit.errors import EmbedkitError

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(EmbedkitError, match="not empty"):
        train(config(tiny, data, tmp_path / "busy"), quiet=True)


def test_lora_trains_adapters_and_saves_full_model(tiny, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train(config(tiny, data, tmp_path / "lora", lora={"enabled": True, "r": 4, "alpha": 8},
                          learning_rate=5e-2, max_steps=2), quiet=True)
    assert result.lora
    weights = load_file(str(tmp_path / "lora" / "model.safetensors"))
    assert not any("lora" in k for k in weights)  # adapters folded into the weights
    assert set(weights) == set(load_file(str(tiny / "model.safetensors")))
    assert changed(tiny, tmp_path / "lora") > 0
    SentenceTransformer(str(tmp_path / "lora"), device="cpu")


def test_decoder_base_gets_last_token_pooling(data, tmp_path):
    from transformers import BertTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from embedkit.training.modeling import build_model

    folder = tmp_path / "qwen"
    folder.mkdir()
    tokenizer = BertTokenizerFast(vocab_file=str(write_vocab(tmp_path / "vocab.txt")))
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg_train = config(folder, data, tmp_path / "dec", max_steps=1)
    model = build_model(cfg_train, device="cpu")
    assert model[1].get_config_dict()["pooling_mode"] == "lasttoken"
    train(cfg_train, quiet=True)
    saved = json.loads((tmp_path / "dec" / "1_Pooling" / "config.json").read_text())
    assert saved["pooling_mode"] == "lasttoken"
