"""Issue 22, item 3, from the command line: resuming RL training reads `trainer_state.pt` and the RNG file as data
(`weights_only=True`), so a checkpoint from elsewhere cannot run code; a damaged one is a one-line error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from agents.rl.config import RLConfig
from agents.rl.trainer import RLTrainer
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow


class _WritesAFile:
    """Unpickling this calls open(path, "w"): what a hostile checkpoint would do with os.system instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step toy RL run with its checkpoint and its YAML config (what `embedkit rl train` resumes)."""
    root = tmp_path_factory.mktemp("rl")
    config = RLConfig.from_dict({
        "task": {"name": "digit_map", "params": {"domains": ["next"]}},
        "reward": {"name": "format", "params": {"pattern": "[0-9]"}},
        "rollout": {"group_size": 2, "settings": {"max_new_tokens": 4}},
        "trainer": {"steps": 1, "prompts_per_step": 2, "output_dir": str(root / "run"), "progress": False,
                    "memory_estimate": False},
    })  # fmt: skip
    RLTrainer(config).train()
    (root / "rl.yaml").write_text(config.to_yaml())
    return root


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run for one test (a resume that succeeds moves it on)."""
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


def resume(trained: Path, run: Path):
    return embedkit("rl", "train", "--config", trained / "rl.yaml", "--output-dir", run, "--steps", "2", "-q")


@pytest.mark.parametrize("name", ["trainer_state.pt", "rank_0_rng.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_code(trained, run, tmp_path, name):
    target = run / "checkpoints" / "step-1" / name
    marker = tmp_path / "code-ran"
    state = torch.load(target, weights_only=True)
    state["python" if "rng" in name else "reward"] = _WritesAFile(str(marker))
    torch.save(state, target)
    assert_user_error(resume(trained, run), f"refusing to load {target}", "could run code")
    assert not marker.exists()


def test_resume_reports_a_damaged_checkpoint_file(trained, run):
    target = run / "checkpoints" / "step-1" / "trainer_state.pt"
    target.write_bytes(target.read_bytes()[:-100])
    assert_user_error(resume(trained, run), f"cannot read {target}", "damaged")


def test_an_untouched_checkpoint_still_resumes(trained, run):
    result = resume(trained, run)
    assert result.returncode == 0, result.stderr
    assert "step 2: reward_mean=" in result.stdout


# --- beyond the list: checkpoints that are plain data but not this run's -------------------------------------


@pytest.mark.parametrize("damage", ["wrong-structure", "other-optimizer", "folder"])
def test_resume_reports_a_checkpoint_that_does_not_fit_this_run(trained, run, damage):
    checkpoint = run / "checkpoints" / "step-1"
    target = checkpoint / "trainer_state.pt"
    if damage == "folder":
        target.unlink()
        target.mkdir()
        expected = f"cannot read {target}"
    else:
        state = torch.load(target, weights_only=True)
        if damage == "wrong-structure":
            state = ["not", "a", "trainer", "state"]
        else:  # a parameter group of another size: a checkpoint of another model
            state["optimizer"]["param_groups"][0]["params"] = [0]
        torch.save(state, target)
        expected = f"{checkpoint} does not fit this run"
    assert_user_error(resume(trained, run), expected)
