"""Issue 22 acceptance: fault injection over every model-type folder writer.

Each writer (a BOOM merge with --overwrite, `cocoa tiny-model`, an Agentic-R retriever, an RL checkpoint) runs
`embedkit …` over an older output of its own with `EMBEDKIT_CRASH_AT=<step>`, for every step of
`embedkit.io.SWAP_STEPS`, and is killed there (`os._exit`, no cleanup). The next reader — the library call
that `index build --model`, `Encoder`, CoCoA and RL resume go through — must then find exactly the old folder
(killed before the swap) or the new one (killed after), byte for byte, and leave no leftovers beside it.

Interpreter start-up and imports cost several seconds per process, so each writer's seven killed runs are
forked from one warm interpreter (`drive`): every child is a real process running the CLI's `main` with the
crash step in its environment, exactly as `python -m embedkit …` would, minus the imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedkit.io import CRASH_ENV, SWAP_STEPS, leftovers
from tests.test_index_integrity import ROOT, embedkit

pytestmark = pytest.mark.slow


# --- the warm interpreter that forks one killed writer per step ----------------------------------------------


def drive() -> None:
    """Read {"preload": [...], "jobs": [{"step", "argv", "log"}]} on stdin; fork `embedkit ARGV` with
    EMBEDKIT_CRASH_AT=step for each job in turn; print the children's exit statuses as a JSON list."""
    import importlib

    request = json.load(sys.stdin)
    for name in request["preload"]:
        importlib.import_module(name)
    codes = []
    for job in request["jobs"]:
        pid = os.fork()
        if pid == 0:
            _child(job)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(json.dumps(codes))


def _child(job: dict) -> None:
    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ[CRASH_ENV] = job["step"]
        from embedkit.cli import main

        code = main(job["argv"])
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:  # noqa: BLE001 - report anything, then leave without the parent's cleanup
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def crash_at_every_step(jobs: list[dict], preload: list[str]) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", "from tests.test_model_folder_crashes import drive; drive()"],
                            input=json.dumps({"preload": preload, "jobs": jobs}), capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the writers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Writer:
    """How to write an output at `work` (old, then new over it), which folder is swapped, and how it is read."""

    write: Callable[[Path, Path, bool], list[str]]  # (inputs, work, new) -> argv
    target: Callable[[Path], Path]  # work -> the folder atomic_directory swaps
    read: Callable[[Path], object]  # work -> what a reader loads (raises if it cannot)
    preload: tuple[str, ...]


def _read_sentence_transformer(path: Path) -> object:
    from embedkit.encoding.models import load_sentence_transformer

    return load_sentence_transformer(str(path))


def _read_vlm(path: Path) -> object:
    from embedkit.multimodal.loading import load_vlm

    return load_vlm(path)


def _read_rl_checkpoint(work: Path) -> object:
    from agents.rl.trainer import STATE_FILE, latest_checkpoint
    from embedkit.torch_load import load_tensors

    checkpoint = latest_checkpoint(work / "run")
    assert checkpoint == work / "run" / "checkpoints" / "step-1"
    return load_tensors(checkpoint / STATE_FILE)


WRITERS = {
    "boom-merge": Writer(
        write=lambda i, w, new: ["boom", "merge", "--models", str(i / "a"), str(i / "b"), "--method", "linear",
                                 "--out", str(w / "merged"),
                                 *(["--weights", "0.25", "0.75", "--overwrite"] if new else ["--weights", "1", "1"])],
        target=lambda w: w / "merged",
        read=lambda w: _read_sentence_transformer(w / "merged"),
        preload=("sentence_transformers", "mergekit.merge", "embedkit.merging.merge", "embedkit.cli.boom"),
    ),
    "cocoa-tiny-model": Writer(
        write=lambda i, w, new: ["cocoa", "tiny-model", "--out", str(w / "tiny"), "--seed", "2" if new else "1"],
        target=lambda w: w / "tiny",
        read=lambda w: _read_vlm(w / "tiny"),
        preload=("transformers", "embedkit.multimodal.tiny", "embedkit.multimodal.loading", "embedkit.cli.cocoa"),
    ),
    "agentic-r-retriever": Writer(
        write=lambda i, w, new: ["agentic-r", "train", "--pairs", str(i / "pairs.jsonl"), "--out", str(w / "retriever"),
                                 "--base-model", str(i / ("b" if new else "a")), "--epochs", "1", "--batch-size", "4",
                                 "--set", "hard_negatives=2", *(["--overwrite"] if new else [])],
        target=lambda w: w / "retriever",
        read=lambda w: _read_sentence_transformer(w / "retriever" / "model"),  # what Encoder / reindex load
        preload=("sentence_transformers", "datasets", "agents.agentic_r", "embedkit.cli.agentic_r"),
    ),
    "rl-checkpoint": Writer(
        write=lambda i, w, new: ["rl", "train", "--config", str(i / "rl.yaml"), "--output-dir", str(w / "run"), "-q",
                                 *(["--no-resume", "--set", "trainer.seed=1"] if new else [])],
        target=lambda w: w / "run" / "checkpoints" / "step-1",
        read=_read_rl_checkpoint,
        preload=("transformers", "accelerate", "agents.rl.trainer", "embedkit.cli.rl"),
    ),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two tiny BERTs, Agentic-R training pairs and a one-step toy RL config."""
    from agents.agentic_r import PairPassage, TrainingPair, write_pairs
    from agents.rl.config import RLConfig
    from embedkit.training.tiny import build_tiny_bert

    root = tmp_path_factory.mktemp("inputs")
    build_tiny_bert(root / "a", seed=1, hidden_size=32, layers=1)
    build_tiny_bert(root / "b", seed=2, hidden_size=32, layers=1)

    def passage(i: int) -> PairPassage:
        return PairPassage(id=str(i), title=f"T{i}", text=f"text number {i} about topic {i % 3}")

    write_pairs(root / "pairs.jsonl", [TrainingPair(qid=f"q{k}", turn=0, query=f"question {k}", positives=[passage(k)],
                                                    negatives=[passage(k + 10), passage(k + 20)]) for k in range(6)])  # fmt: skip
    config = RLConfig.from_dict({
        "task": {"name": "digit_map", "params": {"domains": ["next"]}},
        "reward": {"name": "format", "params": {"pattern": "[0-9]"}},
        "rollout": {"group_size": 2, "settings": {"max_new_tokens": 4}},
        "trainer": {"steps": 1, "prompts_per_step": 2, "progress": False, "memory_estimate": False},
    })  # fmt: skip
    (root / "rl.yaml").write_text(config.to_yaml())
    return root


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass
class Crashed:
    writer: Writer
    root: Path
    old: str  # fingerprint of the older output every killed write started from
    codes: dict[str, int]


@pytest.fixture(scope="module", params=list(WRITERS))
def crashed(request, inputs, tmp_path_factory) -> Crashed:
    """One older output per writer, copied once per step; then the killed writes, one per step."""
    writer = WRITERS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    result = embedkit(*writer.write(inputs, root / "old", False))
    assert result.returncode == 0, result.stderr
    jobs = []
    for step in SWAP_STEPS:
        shutil.copytree(root / "old", root / step, symlinks=True)
        jobs.append({"step": step, "argv": writer.write(inputs, root / step, True), "log": str(root / f"{step}.log")})
    codes = crash_at_every_step(jobs, list(writer.preload))
    return Crashed(writer, root, fingerprint(writer.target(root / "old")), dict(zip(SWAP_STEPS, codes, strict=True)))


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_a_kill_at_every_step_leaves_the_old_or_the_new_folder(crashed, step):
    work, writer = crashed.root / step, crashed.writer
    assert crashed.codes[step] == 137, (crashed.root / f"{step}.log").read_text()[-3000:]  # killed at that step
    target = writer.target(work)
    found = leftovers(target)
    if step in ("filled", "synced", "committed"):  # the new folder never replaced the old one
        expected = crashed.old
    elif step == "old-moved":  # the old folder is moved away; the complete new one waits beside it
        assert not target.exists() and found["new"] and found["old"]
        expected = fingerprint(found["new"][0])
    else:  # swapped in already
        expected = fingerprint(target)
    writer.read(work)  # the next reader recovers the folder and loads it
    assert fingerprint(target) == expected
    if step not in ("filled", "synced", "committed"):
        assert expected != crashed.old
    assert leftovers(target) == {"tmp": [], "new": [], "old": []}
