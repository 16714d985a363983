"""Non-persistent buffers (BERT's position_ids / token_type_ids) are not weights: a merge whose inputs differ
in whether their checkpoints carry them (old transformers saved them, transformers 5 does not) must neither
fail nor merge them, and the merged model must hold the buffers its class builds. Real mergekit merges of
tiny random-init BERTs."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("mergekit")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from embedkit.merging import merge_models  # noqa: E402
from embedkit.merging.buffers import non_persistent_buffers  # noqa: E402
from embedkit.merging.mergekit_yaml import run_recipe  # noqa: E402
from embedkit.training.tiny import build_tiny_bert  # noqa: E402

BUFFERS = ["embeddings.position_ids", "embeddings.token_type_ids"]
MAX_POSITIONS = 128  # build_tiny_bert's max_position_embeddings


def with_old_buffers(model, out):
    """A copy of `model` whose checkpoint also holds the buffers, as transformers 4 saved them."""
    shutil.copytree(model, out)
    tensors = load_file(str(out / "model.safetensors"))
    assert not set(BUFFERS) & set(tensors)  # the fresh tiny model is transformers 5 style
    tensors["embeddings.position_ids"] = torch.arange(MAX_POSITIONS).unsqueeze(0)
    tensors["embeddings.token_type_ids"] = torch.zeros(1, MAX_POSITIONS, dtype=torch.long)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("buffers")
    new = {name: build_tiny_bert(root / name, seed=seed) for name, seed in (("base", 3), ("a", 1), ("b", 2))}
    old = {name: with_old_buffers(path, root / f"old-{name}") for name, path in new.items()}
    # The merge every variant below must reproduce: the same models with no buffers anywhere.
    reference = merge_models([new["base"], new["a"], new["b"]], root / "reference", method="multislerp",
                             base_model=new["base"]).path
    return {"new": new, "old": old, "reference": reference}


def merged_tensors(path):
    return load_file(str(path / "model.safetensors"))


def assert_same_merge(out, reference):
    got, want = merged_tensors(out), merged_tensors(reference)
    assert set(got) == set(want) and not set(BUFFERS) & set(got)
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-6


def assert_class_buffers(out):
    """SentenceTransformer(out) loads, and its buffers are the ones transformers builds for the class."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    loaded = SentenceTransformer(str(out), device="cpu")[0].auto_model
    fresh = BertModel(BertConfig.from_pretrained(str(out)))
    got, want = dict(loaded.named_buffers()), dict(fresh.named_buffers())
    assert sorted(want) == BUFFERS and sorted(got) == BUFFERS
    for name in BUFFERS:
        assert torch.equal(got[name], want[name]), name


def test_buffers_are_read_from_the_model_class(tmp_path, models):
    from transformers import Qwen2Config

    bert = non_persistent_buffers(models["new"]["base"])
    assert set(BUFFERS) <= bert and "bert.embeddings.position_ids" in bert  # a head class's name, too
    assert not any(name.endswith(".weight") or name.endswith(".bias") for name in bert)
    # Another architecture, other buffers, no list of names kept anywhere: a decoder's rotary frequencies.
    Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=32, vocab_size=64, architectures=["Qwen2Model"]).save_pretrained(tmp_path)
    assert "rotary_emb.inv_freq" in non_persistent_buffers(tmp_path)
    assert non_persistent_buffers(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("carrier", ["base", "bags"])
def test_task_vector_merge_with_buffers_on_one_side(models, tmp_path, carrier):
    new, old = models["new"], models["old"]
    base = old["base"] if carrier == "base" else new["base"]
    bags = [new["a"], new["b"]] if carrier == "base" else [old["a"], old["b"]]
    result = merge_models([base, *bags], tmp_path / "merged", method="multislerp", base_model=base)

    assert_same_merge(result.path, models["reference"])
    assert_class_buffers(result.path)
    record = json.loads((result.path / "embedkit_merge.json").read_text())
    assert record["buffers_not_merged"] == BUFFERS
    assert "embeddings.position_ids" in merged_tensors(old["base"])  # the inputs are left as they were


def test_buffers_everywhere_are_not_averaged_and_the_recipe_reruns(models, tmp_path):
    old = models["old"]
    out = merge_models([old["base"], old["a"], old["b"]], tmp_path / "merged", method="multislerp",
                       base_model=old["base"]).path
    assert_same_merge(out, models["reference"])
    # The written recipe names the old folders; mergekit's own mergekit-yaml reruns it the same way.
    again = run_recipe(out / "mergekit_config.yml", tmp_path / "remerged").path
    assert_same_merge(again, models["reference"])
    assert_class_buffers(again)


def test_models_without_buffers_are_read_in_place(models, tmp_path):
    from embedkit.merging.buffers import stage_without_buffers

    plain = stage_without_buffers(models["new"]["a"], tmp_path / "staged")
    assert plain.path == models["new"]["a"] and plain.hidden_buffers == () and not (tmp_path / "staged").exists()
    staged = stage_without_buffers(models["old"]["a"], tmp_path / "staged")
    assert staged.hidden_buffers == tuple(BUFFERS)
    index = json.loads((staged.path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(merged_tensors(models["new"]["a"]))
    assert (staged.path / "model.safetensors").resolve() == (models["old"]["a"] / "model.safetensors").resolve()
