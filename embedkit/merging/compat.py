"""Narrow, version-guarded work-arounds for two mergekit 0.1.5 bugs that embedkit users hit.

1. `MergePlanner.plan_tensor` checks an optional weight's presence with
   `[w_in.name] + (w_in.aliases or [])`, but `WeightInfo.aliases` is a tuple, so list + tuple raises
   `TypeError` for every architecture with an optional aliased weight — BERT's `embeddings.position_ids`,
   i.e. every BERT-family sentence-transformers model.
2. Qwen2-VL / Qwen2.5-VL architecture definitions read `num_hidden_layers` from the top-level config;
   under transformers 5 it only lives in `config.text_config`, so planning fails with
   "Config ... has no attribute num_hidden_layers".

Each patch is applied only when the installed mergekit is at most `LAST_AFFECTED` *and* the bug is
detected, and it changes nothing outside the faulty case. `tests/test_merging_compat.py` has strict
xfail tests that start passing — and therefore fail the suite — once upstream fixes a bug, which is the
signal to delete the patch.
"""

from __future__ import annotations

import functools
import inspect
import logging
from importlib import metadata

from packaging.version import Version

LOG = logging.getLogger(__name__)

LAST_AFFECTED = Version("0.1.5")
# Qwen2-VL-family model types whose text-decoder layer count moved under `text_config` in transformers 5.
_VL_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})
_applied: set[str] = set()


def mergekit_version() -> Version:
    return Version(metadata.version("mergekit"))


def _guarded() -> bool:
    return mergekit_version() <= LAST_AFFECTED


def plan_alias_bug_present() -> bool:
    """True when the installed mergekit still concatenates a list with the alias tuple."""
    from mergekit.plan import MergePlanner

    original = getattr(MergePlanner.plan_tensor, "__embedkit_original__", MergePlanner.plan_tensor)
    return "[w_in.name] + (w_in.aliases or [])" in inspect.getsource(original)


def vl_layer_count_bug_present() -> bool:
    """True when mergekit cannot read a Qwen2-VL config's layer count (transformers 5 layout)."""
    from mergekit.architecture.json_definitions import JsonModuleArchitecture
    from transformers import Qwen2VLConfig

    original = getattr(JsonModuleArchitecture.num_layers, "__embedkit_original__", JsonModuleArchitecture.num_layers)
    config = Qwen2VLConfig(text_config={"num_hidden_layers": 2}, architectures=["Qwen2VLForConditionalGeneration"])
    if hasattr(config, "num_hidden_layers"):
        return False
    from mergekit.architecture import arch_info_for_config

    arch = arch_info_for_config(config)
    module = arch.modules["text_decoder"].architecture
    try:
        original(module, config)
    except RuntimeError:
        return True
    return False


def _patch_plan_tensor() -> None:
    from mergekit.plan import LoaderCache, MergePlanner

    original = MergePlanner.plan_tensor

    @functools.wraps(original)
    def plan_tensor(self, weight, weights_in, models, cfg_reader):
        if not (weight.optional and any(w.aliases for w in weights_in)):
            return original(self, weight, weights_in, models, cfg_reader)
        # The faulty case: do the presence check correctly, then let mergekit plan the (present) tensor
        # as non-optional so its own check is skipped; the saved entry keeps the original WeightInfo.
        present = any(
            name in LoaderCache().get(model).index.tensor_paths
            for model, w_in in zip(models, weights_in, strict=True)
            for name in (w_in.name, *(w_in.aliases or ()))
        )
        if not present:
            LOG.info("Skipping optional weight %s", weight.name)
            return None
        before = len(self._tensors)
        original(self, weight.model_copy(update={"optional": False}), weights_in, models, cfg_reader)
        if len(self._tensors) > before:
            self._tensors[-1] = (weight, self._tensors[-1][1])
        return None

    plan_tensor.__embedkit_original__ = original  # type: ignore[attr-defined]
    MergePlanner.plan_tensor = plan_tensor


def _patch_vl_num_layers() -> None:
    from mergekit.architecture.json_definitions import JsonModuleArchitecture

    original = JsonModuleArchitecture.num_layers

    @functools.wraps(original)
    def num_layers(self, config):
        key = self.definition.num_layers_config_key
        text_config = getattr(config, "text_config", None)
        if (
            getattr(config, "model_type", None) in _VL_MODEL_TYPES
            and self.definition.override_num_layers is None
            and key
            and "." not in key
            and not hasattr(config, key)
            and text_config is not None
            and hasattr(text_config, key)
        ):
            return getattr(text_config, key)
        return original(self, config)

    num_layers.__embedkit_original__ = original  # type: ignore[attr-defined]
    JsonModuleArchitecture.num_layers = num_layers


def apply_mergekit_workarounds() -> list[str]:
    """Patch the installed mergekit where (and only where) it is known to be broken; idempotent.

    Returns the names of the work-arounds active after the call.
    """
    if not _guarded():
        return sorted(_applied)
    if "plan_alias_tuple" not in _applied and plan_alias_bug_present():
        _patch_plan_tensor()
        _applied.add("plan_alias_tuple")
    if "qwen2_vl_text_config_layers" not in _applied and vl_layer_count_bug_present():
        _patch_vl_num_layers()
        _applied.add("qwen2_vl_text_config_layers")
    return sorted(_applied)
