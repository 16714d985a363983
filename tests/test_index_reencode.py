"""Issue 22, item 5: `embedkit index reencode` is one locked swap, like every other writer of an index folder.

A kill at any step of its write leaves the old index or the re-encoded one with its whole history, and an
`index add` that arrives while reencode loads its model waits, then lands on the re-encoded index (encoded with
its model), losing neither documents nor history. Subprocesses of the real CLI, tiny random BERTs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from tests.test_index_integrity import ROOT, STEPS, doc_ids, docs, embedkit, leftovers

pytestmark = pytest.mark.slow

NEW_DOCS = [{"_id": f"n{i}", "title": word, "text": f"{word} quartz violin harbour {i}"}
            for i, word in enumerate(("zebra", "walrus"))]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    from embedkit.training.tiny import build_tiny_bert

    folder = tmp_path_factory.mktemp("models")
    return (build_tiny_bert(folder / "old", seed=5, hidden_size=32, layers=1),
            build_tiny_bert(folder / "new", seed=6, hidden_size=32, layers=1))


@pytest.fixture(scope="module")
def base(models, tmp_path_factory) -> Path:
    """An index over 20 documents built with the old model, then one `index add`: history [build, add]."""
    folder = tmp_path_factory.mktemp("base")
    index = folder / "index"
    result = embedkit("index", "build", "--corpus", write_jsonl(folder / "corpus.jsonl", docs(20)), "--model",
                      models[0], "--device", "cpu", "--store-vectors", "float32", "--out", index, "--quiet")
    assert result.returncode == 0, result.stderr
    result = embedkit("index", "add", index, "--corpus", write_jsonl(folder / "more.jsonl", docs(2, prefix="m")),
                      "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    return index


@pytest.fixture
def index(base, tmp_path) -> Path:
    copy = tmp_path / "indexes" / "idx"
    shutil.copytree(base, copy)
    return copy


def manifest_of(index: Path) -> dict:
    return json.loads((index / "manifest.json").read_text())


def actions(manifest: dict) -> list[str]:
    return [entry["action"] for entry in manifest["history"]]


@pytest.mark.parametrize("step", STEPS)
def test_reencode_killed_at_every_step_keeps_the_whole_history(index, models, step):
    before = manifest_of(index)
    result = embedkit("index", "reencode", index, "--model", models[1], "--device", "cpu", "--quiet",
                      env={"EMBEDKIT_CRASH_AT": step})
    assert result.returncode == 137, result.stderr  # killed abruptly at that step
    info = embedkit("index", "info", index)  # the next reader recovers the folder
    assert info.returncode == 0, info.stderr
    after = json.loads(info.stdout)
    if step in ("filled", "synced"):
        assert after["encoder"]["fingerprint"] == before["encoder"]["fingerprint"]  # never committed
    elif step != "committed":
        assert after["encoder"]["fingerprint"] != before["encoder"]["fingerprint"]  # the swap had happened
    if after["encoder"]["fingerprint"] == before["encoder"]["fingerprint"]:
        assert after["history"] == before["history"]  # the old state, exactly
    else:  # the new state, with the old history and the reencode entry: never a history reset to ["build"]
        assert after["history"][:-1] == before["history"]
        assert actions(after) == ["build", "add", "reencode"]
        assert after["history"][-1]["documents"] == 22
    assert doc_ids(index) == {f"d{i}" for i in range(20)} | {"m0", "m1"}
    verify = embedkit("index", "verify", index)
    assert verify.returncode == 0, verify.stderr
    assert leftovers(index) == []


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (a writer opens the folder's lock file, then waits for the lock)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def _lock_file(index: Path) -> Path:
    try:
        from embedkit.locks import lock_path
    except ImportError:  # older layout: the lock lived in embedkit.io
        from embedkit.io import lock_path
    return lock_path(index)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see who waits for the lock")
def test_an_add_during_reencode_waits_and_loses_nothing(index, models, tmp_path):
    from embedkit.io import folder_lock

    corpus = write_jsonl(tmp_path / "new.jsonl", NEW_DOCS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}

    def start(*args: object) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "embedkit", *map(str, args)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Hold the folder's lock so that both commands reach their lock while the other is still working: reencode
    # (which, loading its model and reading the documents, is the slow one) and an add that arrives meanwhile.
    with folder_lock(index):
        reencode = start("index", "reencode", index, "--model", models[1], "--device", "cpu", "--quiet")
        add = start("index", "add", index, "--corpus", corpus, "--device", "cpu", "--quiet")
        lock = _lock_file(index)
        deadline = time.monotonic() + 300
        while not (_has_open(reencode.pid, lock) and _has_open(add.pid, lock)):
            for proc in (reencode, add):
                assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the writers never reached the folder's lock"
            time.sleep(0.1)
    for proc in (reencode, add):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    manifest = manifest_of(index)
    assert sorted(actions(manifest)) == ["add", "add", "build", "reencode"], actions(manifest)
    assert doc_ids(index) == {f"d{i}" for i in range(20)} | {"m0", "m1", "n0", "n1"}
    assert manifest["encoder"]["model"] == str(models[1])
    assert embedkit("index", "verify", index).returncode == 0
    # The added documents were encoded by the index's (new) model: each finds itself with cosine 1.
    for doc in NEW_DOCS:
        found = embedkit("search", index, f"{doc['title']} {doc['text']}", "--k", "1", "--device", "cpu",
                         "-o", tmp_path / "hit.jsonl")
        assert found.returncode == 0, found.stderr
        top = json.loads((tmp_path / "hit.jsonl").read_text().splitlines()[0])["hits"][0]
        assert top["id"] == doc["_id"] and top["score"] > 0.999, top
