"""Real-model loading for training: weights dtype (and the refusal of half-precision full fine-tuning),
attention implementation, and the EOS appended for decoder bases with last-token pooling."""

from __future__ import annotations

import json

import pytest
import torch

from embedkit.errors import EmbedkitError
from embedkit.training import TrainConfig, train
from embedkit.training.modeling import append_eos, build_model, weights_dtype

pytestmark = pytest.mark.slow  # training runs


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny Qwen2 decoder with a byte-level BPE tokenizer that has an EOS token (as Qwen's)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from embedkit.multimodal.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("qwen") / "m"
    tokenizer = build_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"query": f"the red star {i}", "pos": [f"a red circle {i}"]}) + "\n"
                            for i in range(4)))
    return path


def make(model, data, out, **overrides) -> TrainConfig:
    return TrainConfig(model=str(model), output_dir=str(out), datasets=[{"name": "d", "path": str(data)}],
                       batch_size=2, device="cpu", max_steps=1, warmup_ratio=0.0, logging_steps=1,
                       **overrides)


def test_half_precision_full_fine_tuning_is_refused(decoder, data, tmp_path):
    with pytest.raises(EmbedkitError, match="fp32 master weights"):
        weights_dtype(make(decoder, data, tmp_path / "o", dtype="bfloat16", lora={"enabled": False}))
    config = make(decoder, data, tmp_path / "o", dtype="bfloat16", lora={"enabled": True, "r": 4})
    assert weights_dtype(config) == torch.bfloat16
    model = build_model(config, device="cpu")
    assert next(model[0].auto_model.parameters()).dtype == torch.bfloat16
    assert weights_dtype(make(decoder, data, tmp_path / "o")) == torch.float32
    # `auto` LoRA on a small model means full fine-tuning: the bf16 load is refused before training.
    with pytest.raises(EmbedkitError, match="fp32 master weights"):
        train(make(decoder, data, tmp_path / "auto", dtype="bfloat16"), quiet=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_implementation_is_passed_to_transformers(decoder, data, tmp_path, attn):
    model = build_model(make(decoder, data, tmp_path / "o", attn_implementation=attn), device="cpu")
    assert model[0].auto_model.config._attn_implementation == attn


def test_decoder_inputs_end_with_eos_and_the_saved_model_keeps_it(decoder, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    config = make(decoder, data, tmp_path / "dec")
    model = build_model(config, device="cpu")
    tokenizer = model[0].tokenizer
    assert model[1].get_config_dict()["pooling_mode"] == "lasttoken"
    features = model.tokenize(["a red circle", "the white strawberry is small and sweet"])
    ids, mask = features["input_ids"], features["attention_mask"]
    last = [int(row[m.bool()][-1]) for row, m in zip(ids, mask, strict=True)]
    assert last == [tokenizer.eos_token_id] * 2  # pooled at EOS, whatever the padding side
    # Truncation keeps the EOS.
    model.max_seq_length = 4
    long = model.tokenize(["a red circle on the left and a blue square on the right"])["input_ids"][0]
    assert len(long) == 4 and int(long[-1]) == tokenizer.eos_token_id
    train(config, quiet=True)
    reloaded = SentenceTransformer(str(tmp_path / "dec"), device="cpu")
    assert reloaded.tokenize(["a red circle"])["input_ids"][0][-1] == tokenizer.eos_token_id
    assert not append_eos(reloaded[0].tokenizer)  # already there: nothing to change
    off = build_model(make(decoder, data, tmp_path / "off", append_eos=False), device="cpu")
    assert off.tokenize(["a red circle"])["input_ids"][0][-1] != tokenizer.eos_token_id
