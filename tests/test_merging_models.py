"""Real mergekit merges of tiny sentence-transformers models, checked numerically; the output must be a
complete sentence-transformers model with pooling, normalization and prompts preserved."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mergekit")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from embedkit.errors import EmbedkitError  # noqa: E402
from embedkit.merging import merge_from_yaml, merge_models  # noqa: E402
from embedkit.training.tiny import build_tiny_bert  # noqa: E402

PROMPTS = {"query": "query: ", "document": ""}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a = build_tiny_bert(root / "a", seed=1, pooling="cls", prompts=PROMPTS)
    (a / "embedkit_training.json").write_text("{}")  # as a trained model would have
    return {
        "a": a,
        "b": build_tiny_bert(root / "b", seed=2, pooling="cls", prompts=PROMPTS),
        "base": build_tiny_bert(root / "base", seed=3, pooling="cls", prompts=PROMPTS),
        "mean": build_tiny_bert(root / "mean", seed=4, pooling="mean", prompts=PROMPTS),
    }


def weights(path):
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items() if v.is_floating_point()}


def max_diff(x, y):
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_linear_merge_is_weighted_average_and_keeps_st_settings(models, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    out = merge_models([models["a"], models["b"]], tmp_path / "lin", method="linear", weights=[0.25, 0.75]).path
    a, b, m = weights(models["a"]), weights(models["b"]), weights(out)
    assert set(m) == set(a)
    assert max_diff(m, {k: 0.25 * a[k] + 0.75 * b[k] for k in a}) < 1e-6

    model = SentenceTransformer(str(out), device="cpu")
    pooling = next(mod for mod in model if isinstance(mod, Pooling))
    assert pooling.get_config_dict()["pooling_mode"] == "cls"
    assert any(isinstance(mod, Normalize) for mod in model)
    assert model.prompts["query"] == "query: "
    assert (out / "mergekit_config.yml").exists()
    assert not (out / "embedkit_training.json").exists()  # input models' records are not copied
    record = json.loads((out / "embedkit_merge.json").read_text())
    assert record["pooling"] == "cls" and record["mergekit_config"]["merge_method"] == "linear"
    vectors = model.encode(["the protein of the cell"], convert_to_tensor=True)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_merging_identical_models_reproduces_them(models, tmp_path):
    import shutil

    from sentence_transformers import SentenceTransformer

    copy = shutil.copytree(models["a"], tmp_path / "a-copy")  # mergekit refuses the same path twice
    out = merge_models([models["a"], copy], tmp_path / "same", method="multislerp").path
    assert max_diff(weights(out), weights(models["a"])) < 1e-5
    text = ["what is the capital city"]
    original = SentenceTransformer(str(models["a"]), device="cpu").encode(text)
    merged = SentenceTransformer(str(out), device="cpu").encode(text)
    assert abs(original - merged).max() < 1e-5


def test_multislerp_weights_pick_a_model_and_midpoint_lies_between(models, tmp_path):
    a, b = weights(models["a"]), weights(models["b"])
    only_a = merge_models([models["a"], models["b"]], tmp_path / "ms10", weights=[1.0, 0.0]).path
    assert max_diff(weights(only_a), a) < 1e-4
    mid = weights(merge_models([models["a"], models["b"]], tmp_path / "ms", method="multislerp").path)
    # Spherical interpolation: the midpoint differs from the plain average but lies between the two models.
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(mid[name], (a[name] + b[name]) / 2, atol=1e-6)
    assert (mid[name] - a[name]).norm() < (b[name] - a[name]).norm()
    assert (mid[name] - b[name]).norm() < (b[name] - a[name]).norm()


def test_slerp_endpoints(models, tmp_path):
    a, b = weights(models["a"]), weights(models["b"])
    t0 = merge_models([models["a"], models["b"]], tmp_path / "t0", method="slerp", parameters={"t": 0.0}).path
    t1 = merge_models([models["a"], models["b"]], tmp_path / "t1", method="slerp", parameters={"t": 1.0}).path
    assert max_diff(weights(t0), a) < 1e-5
    assert max_diff(weights(t1), b) < 1e-5


def test_task_arithmetic_adds_task_vectors(models, tmp_path):
    base, a, b = weights(models["base"]), weights(models["a"]), weights(models["b"])
    out = merge_models([models["base"], models["a"], models["b"]], tmp_path / "ta", method="task_arithmetic",
                       base_model=models["base"], weights=[1.0, 0.5, 0.5],
                       parameters={"normalize": False}).path
    expected = {k: base[k] + 0.5 * (a[k] - base[k]) + 0.5 * (b[k] - base[k]) for k in base}
    assert max_diff(weights(out), expected) < 1e-5


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_sparse_methods_produce_loadable_models(models, tmp_path, method):
    from sentence_transformers import SentenceTransformer

    out = merge_models([models["base"], models["a"], models["b"]], tmp_path / method, method=method,
                       base_model=models["base"], model_parameters=[{}, {"density": 0.5}, {"density": 0.5}]).path
    merged, base = weights(out), weights(models["base"])
    assert max_diff(merged, base) > 0
    assert SentenceTransformer(str(out), device="cpu").encode(["a query"]).shape == (1, 32)


def test_refuses_models_with_different_pooling_and_leaves_nothing(models, tmp_path):
    with pytest.raises(EmbedkitError, match="pooling|1_Pooling"):
        merge_models([models["a"], models["mean"]], tmp_path / "bad", method="linear")
    assert not (tmp_path / "bad").exists()


def test_mergekit_yaml_round_trip(models, tmp_path):
    first = merge_models([models["a"], models["b"]], tmp_path / "first", method="linear").path
    again = merge_from_yaml(first / "mergekit_config.yml", tmp_path / "again").path
    assert max_diff(weights(first), weights(again)) == 0


def test_bad_requests_are_user_errors(models, tmp_path):
    with pytest.raises(EmbedkitError, match="unknown merge method"):
        merge_models([models["a"], models["b"]], tmp_path / "x", method="nope")
    with pytest.raises(EmbedkitError, match="exactly 2"):
        merge_models([models["a"], models["b"], models["base"]], tmp_path / "x", method="slerp")
    with pytest.raises(EmbedkitError, match="weights"):
        merge_models([models["a"], models["b"]], tmp_path / "x", weights=[1.0])
    with pytest.raises(EmbedkitError, match="modules.json"):
        merge_models([tmp_path, models["b"]], tmp_path / "x")
