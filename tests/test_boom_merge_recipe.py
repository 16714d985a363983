"""The merge recipe as data: an update merged with weight w equals the interpolation the settings state,
tensor by tensor (real mergekit merges of tiny models); bags carry their own ratios, seeds and weights;
multislerp works on task vectors when given a base and refuses nothing silently."""

from __future__ import annotations

import pytest

pytest.importorskip("mergekit")

from safetensors.torch import load_file  # noqa: E402

from embedkit.boom import BoomConfig, MergeSettings, UpdateSettings, merge_update, update_merge_plan  # noqa: E402
from embedkit.boom.lineage import write_lineage  # noqa: E402
from embedkit.boom.update import backbone_of  # noqa: E402
from embedkit.errors import DataFormatError, EmbedkitError  # noqa: E402
from embedkit.training.tiny import build_tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    backbone = build_tiny_bert(root / "backbone", seed=3, pooling="cls")
    current = build_tiny_bert(root / "current", seed=1, pooling="cls")
    write_lineage(current, {"kind": "boom_train", "base_model": str(backbone), "backbone": str(backbone)})
    update = build_tiny_bert(root / "update", seed=2, pooling="cls")
    return backbone, current, update


def weights(path):
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items() if v.is_floating_point()}


def assert_tensorwise(merged, expected, tol=1e-5):
    assert set(merged) == set(expected)
    for name, tensor in merged.items():
        assert (tensor - expected[name]).abs().max().item() < tol, name


def test_backbone_comes_from_the_lineage(trio):
    backbone, current, update = trio
    assert backbone_of(str(current)) == str(backbone)
    assert backbone_of(str(update)) == str(update)  # no lineage: its own backbone


@pytest.mark.parametrize("w", [0.3, 0.5])
def test_linear_update_is_the_stated_interpolation(trio, tmp_path, w):
    backbone, current, update = trio
    result, plan = merge_update(str(current), str(update), tmp_path / "m", merge=MergeSettings(method="linear"),
                                settings=UpdateSettings(weight=w))
    assert plan.weights == [1 - w, w] and plan.base_model is None
    c, u = weights(current), weights(update)
    assert_tensorwise(weights(result.path), {k: (1 - w) * c[k] + w * u[k] for k in c})


def test_task_arithmetic_update_is_relative_to_the_backbone(trio, tmp_path):
    backbone, current, update = trio
    w = 0.3
    result, plan = merge_update(str(current), str(update), tmp_path / "m",
                                merge=MergeSettings(method="task_arithmetic"), settings=UpdateSettings(weight=w))
    assert plan.base_model == str(backbone) and plan.weights == [1.0, 1 - w, w]
    b, c, u = weights(backbone), weights(current), weights(update)
    expected = {k: b[k] + (1 - w) * (c[k] - b[k]) + w * (u[k] - b[k]) for k in b}
    assert_tensorwise(weights(result.path), expected)


def test_task_arithmetic_relative_to_the_current_model(trio, tmp_path):
    backbone, current, update = trio
    w = 0.25
    result, plan = merge_update(str(current), str(update), tmp_path / "m",
                                merge=MergeSettings(method="task_arithmetic"),
                                settings=UpdateSettings(weight=w, merge_base="current"))
    c, u = weights(current), weights(update)
    assert_tensorwise(weights(result.path), {k: c[k] + w * (u[k] - c[k]) for k in c})


def test_multislerp_relative_to_a_base_uses_task_vectors(trio, tmp_path):
    backbone, current, update = trio
    plain, _ = merge_update(str(current), str(update), tmp_path / "plain", merge=MergeSettings(method="multislerp"),
                            settings=UpdateSettings(weight=0.5))
    assert "base_model" not in plain.mergekit_config
    relative, plan = merge_update(str(current), str(update), tmp_path / "rel",
                                  merge=MergeSettings(method="multislerp", relative_to_base=True),
                                  settings=UpdateSettings(weight=0.5))
    assert relative.mergekit_config["base_model"] == str(backbone) and plan.base_model == str(backbone)
    p, r = weights(plain.path), weights(relative.path)
    assert max((p[k] - r[k]).abs().max().item() for k in p) > 1e-4
    # With weight 1 on one model, multislerp returns that model either way (base added back).
    one, _ = merge_update(str(current), str(update), tmp_path / "one",
                          merge=MergeSettings(method="multislerp", relative_to_base=True),
                          settings=UpdateSettings(weight=1.0))
    assert_tensorwise(weights(one.path), weights(update))


def test_slerp_update_weight_is_t(trio):
    backbone, current, update = trio
    plan = update_merge_plan(str(current), str(update), str(backbone), MergeSettings(method="slerp"),
                             UpdateSettings(weight=0.2))
    assert plan.parameters["t"] == 0.2 and plan.models == [str(current), str(update)]
    with pytest.raises(EmbedkitError, match="disagree"):
        update_merge_plan(str(current), str(update), str(backbone),
                          MergeSettings(method="slerp", parameters={"t": 0.7}), UpdateSettings(weight=0.2))
    with pytest.raises(EmbedkitError, match="update.weight"):
        update_merge_plan(str(current), str(update), str(backbone),
                          MergeSettings(method="linear", weights=[1, 1]), UpdateSettings())


def test_bags_as_data_and_base_model_never_silently_ignored(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "q", "pos": ["p"]}\n')
    common = {"model": "m", "output_dir": str(tmp_path / "o"), "datasets": [{"name": "d", "path": str(data)}]}
    config = BoomConfig(**common, bags=[{"ratio": 60, "weight": 0.25, "seed": 7}, 100, {"ratio": 80, "weight": 2}])
    assert config.ratios == [60, 100, 80]
    assert config.bag_seeds == [7, 43, 44]
    assert config.bag_weights == [0.25, 1.0, 2.0]
    assert BoomConfig(**common, bags=[80, 100]).bag_weights is None
    with pytest.raises(ValueError, match="either in merge.weights or per bag"):
        BoomConfig(**common, bags=[{"ratio": 60, "weight": 1}, 100], merge={"weights": [1, 2]})
    with pytest.raises(ValueError, match="does not take a base model"):
        MergeSettings(method="linear", base_model="x")
    with pytest.raises(ValueError, match="merge weights for"):
        BoomConfig(**common, bags=[60, 100], merge={"weights": [1, 2, 3]})
    path = tmp_path / "boom.yaml"
    path.write_text(f"model: m\noutput_dir: o\ndatasets: [{{name: d, path: {data}}}]\nbags: [50, 100]\n")
    loaded = BoomConfig.from_yaml(path, overrides={"merge.method": "ties", "update.weight": 0.2})
    assert loaded.merge.method == "ties" and loaded.update.weight == 0.2
    with pytest.raises(DataFormatError, match="update.weight"):
        BoomConfig.from_yaml(path, overrides={"update.weight": 2})


def test_merge_base_from_settings_for_bags():
    from embedkit.boom.train import merge_base, merge_inputs

    assert merge_base(MergeSettings(method="multislerp"), "/tmp/base") is None
    assert merge_base(MergeSettings(method="multislerp", relative_to_base=True), "/tmp/base") == "/tmp/base"
    assert merge_base(MergeSettings(method="multislerp", base_model="/tmp/other"), "/tmp/base") == "/tmp/other"
    assert merge_base(MergeSettings(method="ties"), "/tmp/base") == "/tmp/base"
    assert merge_inputs(["a", "b"], [0.2, 0.8], "base") == (["base", "a", "b"], [1.0, 0.2, 0.8])
    assert merge_inputs(["a", "b"], None, None) == (["a", "b"], None)


def test_update_cli_takes_defaults_from_a_boom_config(tmp_path, capsys):
    import argparse

    from embedkit.cli import main
    from embedkit.cli.boom import _merge_settings

    defaults = MergeSettings(method="task_arithmetic", relative_to_base=False, parameters={"normalize": False})
    args = argparse.Namespace(method=None, weights=None, relative_to_base=None, t=None, density=0.3)
    merged = _merge_settings(args, defaults)
    assert merged.method == "task_arithmetic" and merged.parameters == {"normalize": False, "density": 0.3}
    args.method = "linear"
    assert _merge_settings(args, defaults).method == "linear"  # a flag beats the config
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "q", "pos": ["p"]}\n')
    config = tmp_path / "boom.yaml"
    config.write_text(f"model: m\noutput_dir: o\ndatasets: [{{name: d, path: {data}}}]\nupdate: {{weight: 0}}\n")
    status = main(["boom", "update", "--config", str(config), "--base", "m", "--new-data", str(data),
                   "--output-dir", str(tmp_path / "out")])
    assert status == 2 and "update.weight" in capsys.readouterr().err
