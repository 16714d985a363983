"""Issue 22, items 1 and 6, from the command line: a folder writer replaces only its own earlier output (the
ownership marker is required by `atomic_directory`'s signature), and a model folder that a killed writer left
mid-swap is recovered by the next command that reads it, as index folders are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.io import atomic_directory, leftovers
from tests.helpers import write_jsonl
from tests.test_index_integrity import assert_user_error, docs, embedkit


def test_atomic_directory_cannot_be_called_without_a_marker(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(TypeError, match="marker"):
        with atomic_directory(target, overwrite=True):  # type: ignore[call-arg]  # the point of the test
            pass
    with pytest.raises(TypeError):
        with atomic_directory(target, True, "config.json"):  # type: ignore[misc]  # keyword-only
            pass
    assert not target.exists() and leftovers(target) == {"tmp": [], "new": [], "old": []}


# --- item 1: `embedkit cocoa tiny-model --out DIR` ------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_refuses_a_users_folder_and_replaces_its_own(tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "figures").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\chapter{Results}")
    (thesis / "figures" / "plot.pdf").write_bytes(b"%PDF-1.7")
    result = embedkit("cocoa", "tiny-model", "--out", thesis)
    assert_user_error(result, str(thesis), "is not a tiny model", "embedkit_tiny_model.json")
    assert sorted(str(p.relative_to(thesis)) for p in thesis.rglob("*")) == ["figures", "figures/plot.pdf",
                                                                               "thesis.tex"]  # fmt: skip
    assert (thesis / "thesis.tex").read_text() == "\\chapter{Results}"

    model = tmp_path / "tiny"
    for seed in ("1", "2"):  # the second run replaces the first run's model, as the command always did
        result = embedkit("cocoa", "tiny-model", "--out", model, "--seed", seed)
        assert result.returncode == 0, result.stderr
    assert json.loads((model / "embedkit_tiny_model.json").read_text())["seed"] == 2
    assert (model / "config.json").is_file() and leftovers(model) == {"tmp": [], "new": [], "old": []}


# --- item 6: a model folder killed mid-swap is recovered by its next reader ------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    from embedkit.training.tiny import build_tiny_bert

    root = tmp_path_factory.mktemp("models")
    return (build_tiny_bert(root / "a", seed=1, hidden_size=32, layers=1),
            build_tiny_bert(root / "b", seed=2, hidden_size=32, layers=1))  # fmt: skip


@pytest.mark.slow
def test_boom_merge_killed_after_moving_the_old_model_away_is_recovered_by_index_build(two_models, tmp_path):
    a, b = two_models
    merged = tmp_path / "merged"
    merge = ("boom", "merge", "--models", a, b, "--method", "linear", "--out", merged)
    assert embedkit(*merge, "--weights", "0.5", "0.5").returncode == 0
    result = embedkit(*merge, "--weights", "0.25", "0.75", "--overwrite", env={"EMBEDKIT_CRASH_AT": "old-moved"})
    assert result.returncode == 137, result.stderr
    assert not merged.exists() and leftovers(merged)["new"] and leftovers(merged)["old"]

    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(6))
    result = embedkit("index", "build", "--corpus", corpus, "--model", merged, "--device", "cpu",
                      "--out", tmp_path / "idx", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Rolled forward: the finished second merge is the model, and nothing else is left beside it.
    record = json.loads((merged / "embedkit_merge.json").read_text())
    assert [m["parameters"]["weight"] for m in record["mergekit_config"]["models"]] == [0.25, 0.75]
    assert leftovers(merged) == {"tmp": [], "new": [], "old": []}
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["num_docs"] == 6
