"""One registry type everywhere users pick among methods: lazy entries, and errors that list the names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from embedkit.errors import EmbedkitError
from embedkit.registry import Registry

# (module, attribute) of every registry users choose from.
PROJECT_REGISTRIES = [
    ("embedkit.index.kinds", "INDEX_KINDS"),
    ("embedkit.encoding.registry", "ENCODER_FAMILIES"),
    ("embedkit.lexical.backends", "BACKENDS"),
    ("embedkit.training.losses", "LOSSES"),
    ("embedkit.merging.methods", "MERGE_METHODS"),
    ("embedkit.hybrid.fusion", "FUSION_METHODS"),
    ("agents.rl.advantages", "ADVANTAGE_ESTIMATORS"),
    ("agents.rl.regularizers", "POLICY_TERMS"),
    ("agents.rl.rollout", "ROLLOUT_STRATEGIES"),
    ("agents.rl.surgery", "GRADIENT_SURGERY"),
    ("agents.rl.reward_registry", "REWARDS"),
    ("agents.rl.tasks", "TASKS"),
    ("agents.rewards.judges", "JUDGES"),
    ("agents.agentic_r.utility", "LOCAL_SCORERS"),
    ("agents.agentic_r.utility", "GLOBAL_SCORERS"),
]


@pytest.mark.parametrize(("module", "name"), PROJECT_REGISTRIES, ids=[f"{m}.{n}" for m, n in PROJECT_REGISTRIES])
def test_project_registries_are_one_type_and_name_their_choices(module: str, name: str) -> None:
    registry = getattr(importlib.import_module(module), name)
    assert isinstance(registry, Registry)
    names = registry.names()
    assert names, f"{module}.{name} is empty"
    with pytest.raises(EmbedkitError) as error:
        registry.get("no-such-entry")
    message = str(error.value)
    assert "no-such-entry" in message and registry.kind in message
    for entry in names:
        assert entry in message


def test_unknown_name_lists_the_registered_names_sorted() -> None:
    methods = Registry[int]("toy method")
    methods.add("zeta", 1)
    methods.add("alpha", 2)
    with pytest.raises(EmbedkitError, match=r"unknown toy method 'beta'; choose one of: alpha, zeta$"):
        methods.get("beta")
    assert list(methods) == ["alpha", "zeta"] and len(methods) == 2 and "alpha" in methods


def test_empty_registry_says_so() -> None:
    with pytest.raises(EmbedkitError, match=r"choose one of: \(none\)"):
        Registry[int]("thing").get("x")


def test_lazy_entry_is_imported_on_first_get_only() -> None:
    registry = Registry[object]("codec")
    registry.add("b64", "base64:b64encode")
    assert registry._entries["b64"] == "base64:b64encode"  # listed without importing
    import base64

    assert registry.get("b64") is base64.b64encode
    assert registry._entries["b64"] is base64.b64encode  # resolved once


def test_lazy_entry_whose_module_is_missing_is_a_clear_error() -> None:
    registry = Registry[object]("backend")
    registry.add("ghost", "embedkit_no_such_module:Thing")
    with pytest.raises(EmbedkitError, match=r"backend 'ghost' is not available: No module named 'embedkit_no_such_module'"):
        registry.get("ghost")


def test_a_name_cannot_be_registered_twice_for_different_objects() -> None:
    registry = Registry[object]("merge method")

    @registry.register("mean")
    def mean() -> None: ...

    registry.add("mean", mean)  # the same object again is harmless (a module imported twice)
    with pytest.raises(ValueError, match="merge method 'mean' is already registered"):
        registry.add("mean", lambda: None)


def test_a_lazy_entry_may_be_replaced_by_the_object_it_names() -> None:
    registry = Registry[object]("codec")
    registry.add("b64", "base64:b64encode")
    import base64

    registry.add("b64", base64.b64encode)  # import-time self-registration of a lazy entry
    assert registry.get("b64") is base64.b64encode


@pytest.mark.slow  # a fresh interpreter
def test_listing_lazy_registries_imports_no_heavy_library() -> None:
    # Listing index kinds, BM25 backends and encoder families must not import FAISS, pyserini or torch.
    code = (
        "import sys\n"
        "from embedkit.index.kinds import INDEX_KINDS\n"
        "from embedkit.lexical.backends import BACKENDS\n"
        "from embedkit.encoding.registry import ENCODER_FAMILIES\n"
        "print(INDEX_KINDS.names(), BACKENDS.names(), ENCODER_FAMILIES.names())\n"
        "heavy = sorted(m for m in ('faiss', 'pyserini', 'torch', 'jnius') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'bm25s', 'pyserini'" in result.stdout and "'bm25', 'dense'" in result.stdout
