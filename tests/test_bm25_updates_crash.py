"""Issue 24, BM25: an update killed at any step (`EMBEDKIT_CRASH_AT`) leaves the old index or the new one.

Each case runs `embedkit index add` (one new document, one replaced) or `embedkit index compact` in a child
process that exits abruptly at one step: the steps of the folder swap (`embedkit.io.SWAP_STEPS`) and the BM25
update's own (`embedkit.lexical.update.UPDATE_STEPS`). The next open recovers the folder; its search results
must be exactly those before the update or those after it (never a mix), it must pass `index verify`, and the
next update must work and leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit.index.kinds import verify_index
from embedkit.io import SWAP_STEPS
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical.settings import BM25MergePolicy
from embedkit.lexical.update import UPDATE_STEPS, add_documents, compact_index, remove_documents
from tests.helpers import write_jsonl
from tests.test_bm25_updates import doc, needs_java, results

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [["alpha", "beta"], ["gamma", "alpha"], ["delta"], ["sigma", "omega", "alpha"], ["beta", "beta"]]
NEW = [{"_id": "n1", "title": "", "text": "omega omega alpha"}, {"_id": "d2", "title": "", "text": "beta gamma"}]
# Steps before the new folder is complete roll back; from its rename to NAME.new-* on, it rolls forward.
ROLLED_BACK = {*UPDATE_STEPS, "filled", "synced"}
COMPACT_STEPS = {"bm25-compact-store-written", "bm25-compacted"}
CASES = [(step, "compact" if step in COMPACT_STEPS else "add") for step in (*UPDATE_STEPS, *SWAP_STEPS)]
# The swap is the same code for both backends (bm25s runs every step); Lucene runs its own steps and the one
# where the outcome may go either way.
LUCENE_STEPS = {*UPDATE_STEPS, "committed"}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir()
                  if p.name.startswith(folder.name + ".") and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
    """A built index with one document removed (so compact has work), its results, and the results after the
    add and after the compact the crashed children run."""
    base = tmp_path_factory.mktemp(f"crash-{request.param}")
    index = build_bm25_index([doc(f"d{i}", text) for i, text in enumerate(TEXTS)], base / "built",
                             BM25Settings(backend=request.param, merge=BM25MergePolicy(max_segments=None,
                                                                                       max_deleted_fraction=None)))
    remove_documents(index, ["d4"])
    corpus = write_jsonl(base / "new.jsonl", NEW)
    after = {}
    for action in ("add", "compact"):
        copy = Path(shutil.copytree(index, base / f"after-{action}"))
        if action == "add":
            add_documents(copy, [doc(r["_id"], r["text"].split()) for r in NEW])
        else:
            compact_index(copy)
        after[action] = results(copy)
    return {"backend": request.param, "index": index, "corpus": corpus, "before": results(index), "after": after}


@pytest.mark.parametrize("reference, step, action", [
    *[("bm25s", step, action) for step, action in CASES],
    *[pytest.param("pyserini", step, action, marks=needs_java) for step, action in CASES if step in LUCENE_STEPS],
], indirect=["reference"])
def test_update_killed_at_every_step_leaves_old_or_new(reference, step, action, tmp_path):
    index = Path(shutil.copytree(reference["index"], tmp_path / "idx"))
    command = ["index", "add", str(index), "--corpus", str(reference["corpus"])] if action == "add" else \
        ["index", "compact", str(index)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBEDKIT_CRASH_AT": step}
    killed = subprocess.run([sys.executable, "-m", "embedkit", *command], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=300)
    assert killed.returncode == 137, killed.stderr  # it did reach the step, and died there
    got = results(index)  # the open recovers an interrupted swap first
    if step in ROLLED_BACK:
        assert got == reference["before"]
    elif step == "committed":
        assert got in (reference["before"], reference["after"][action])
    else:
        assert got == reference["after"][action]
    verify_index(index)
    remove_documents(index, ["d0"])  # the next writer works, and sweeps what the killed one left
    assert leftovers(index) == []
    assert not [p for p in index.iterdir() if ".tmp-" in p.name]  # no half-written document store
    verify_index(index)
