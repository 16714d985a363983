"""The mergekit 0.1.5 work-arounds: applied only where needed, and strict-xfail tests that start failing
(XPASS) the day upstream fixes a bug — then delete the matching patch in embedkit/merging/compat.py."""

from __future__ import annotations

import pytest

pytest.importorskip("mergekit")

from packaging.version import Version  # noqa: E402

from embedkit.merging import compat  # noqa: E402
from embedkit.training.tiny import build_tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def two_berts(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    return build_tiny_bert(root / "a", seed=1), build_tiny_bert(root / "b", seed=2)


def _linear_config(a, b):
    from mergekit.config import MergeConfiguration

    return MergeConfiguration.model_validate(
        {"merge_method": "linear", "dtype": "float32",
         "models": [{"model": str(a), "parameters": {"weight": 1.0}}, {"model": str(b), "parameters": {"weight": 1.0}}]}
    )


@pytest.mark.xfail(strict=True, raises=TypeError, reason="mergekit 0.1.5 plan.py: list + tuple of weight aliases")
def test_upstream_mergekit_still_fails_on_bert(two_berts, tmp_path, monkeypatch):
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    compat.apply_mergekit_workarounds()
    original = getattr(MergePlanner.plan_tensor, "__embedkit_original__", MergePlanner.plan_tensor)
    monkeypatch.setattr(MergePlanner, "plan_tensor", original)
    run_merge(_linear_config(*two_berts), str(tmp_path / "out"), MergeOptions(quiet=True))


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason="mergekit 0.1.5 reads num_hidden_layers at the top of Qwen2-VL configs")
def test_upstream_mergekit_still_fails_on_qwen2_vl_config():
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.json_definitions import JsonModuleArchitecture
    from transformers import Qwen2VLConfig

    compat.apply_mergekit_workarounds()
    config = Qwen2VLConfig(text_config={"num_hidden_layers": 3}, architectures=["Qwen2VLForConditionalGeneration"])
    module = arch_info_for_config(config).modules["text_decoder"].architecture
    original = getattr(JsonModuleArchitecture.num_layers, "__embedkit_original__", JsonModuleArchitecture.num_layers)
    original(module, config)


def test_patched_bert_merge_is_the_average(two_berts, tmp_path):
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    active = compat.apply_mergekit_workarounds()
    assert "plan_alias_tuple" in active
    run_merge(_linear_config(*two_berts), str(tmp_path / "out"), MergeOptions(quiet=True))
    a, b = (load_file(str(p / "model.safetensors")) for p in two_berts)
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(merged) == set(a)
    for name, tensor in merged.items():
        if tensor.is_floating_point():
            assert (tensor - (a[name] + b[name]) / 2).abs().max().item() < 1e-6, name


def test_patched_qwen2_vl_layer_count_comes_from_text_config():
    from mergekit.architecture import arch_info_for_config
    from transformers import Qwen2VLConfig

    compat.apply_mergekit_workarounds()
    config = Qwen2VLConfig(text_config={"num_hidden_layers": 3}, architectures=["Qwen2VLForConditionalGeneration"])
    arch = arch_info_for_config(config)
    text = arch.modules["text_decoder"].architecture
    assert text.num_layers(config) == 3
    names = [w.name for w in text.all_weights(config)]
    assert "model.layers.2.mlp.up_proj.weight" in names and "model.layers.3.mlp.up_proj.weight" not in names


def test_workarounds_are_version_guarded(monkeypatch):
    monkeypatch.setattr(compat, "_applied", set())
    monkeypatch.setattr(compat, "mergekit_version", lambda: Version("0.1.6"))
    assert compat.apply_mergekit_workarounds() == []


def test_patch_leaves_other_architectures_alone():
    """The Qwen2-VL patch does not answer for configs that really lack the key (e.g. a plain Qwen2 config)."""
    from mergekit.architecture import arch_info_for_config
    from transformers import Qwen2Config

    compat.apply_mergekit_workarounds()
    config = Qwen2Config(num_hidden_layers=2, architectures=["Qwen2ForCausalLM"])
    arch = arch_info_for_config(config)
    module = next(iter(arch.modules.values())).architecture
    assert module.num_layers(config) == 2
