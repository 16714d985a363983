"""Training generative reward models with the shared RL module.

- `judge_prompts` (task registry name `judge_prompts`): the judge's training prompts from a jsonl file written
  by the builders (`prompt`, `answer`, optional `domain`, `demonstration`), served in clean passes: each
  pass visits every prompt exactly once in a fresh order, and stamps the pass number into dict ground truths
  as `round` (what ConsistRM's temporal consistency counts).
- `GRMTrainer`: `agents.rl.trainer.RLTrainer` (which checkpoints the reward's state: ConsistRM's per-item
  memory) plus the task's position in the current pass, saved beside every checkpoint and restored on
  resume, so an interrupted and resumed run samples and labels exactly as an uninterrupted one. Each step's
  metrics say how much every prompt domain (ReflectRM's `response` and `analysis` tasks) fed the policy
  gradient: `trained_rows/<domain>` (responses with a non-zero advantage: their terms are in the loss) and
  `advantage_abs/<domain>` (mean |advantage| over the domain's response tokens). A domain whose groups all
  score alike (e.g. every analysis choice unreadable) shows 0 there: it was rolled out but taught nothing.
- `consistrm_records` / `acpo_records`: training prompts from any preference-pair file (ReflectRM's builder
  lives in `agents.rewards.reflectrm`).

    records = consistrm_records(load_pairs("pairs.jsonl"))
    write_records_jsonl("runs/consistrm/prompts.jsonl", records)
    GRMTrainer(RLConfig.from_yaml("configs/rm_consistrm.yaml")).train()
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.rewards.pairs import PreferencePair
from agents.rl.config import RLConfig
from agents.rl.tasks import Example, Task
from agents.rl.trainer import Prepared, RLTrainer
from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.io import atomic_write


class PassTask(Task):
    """A task sampled in clean passes (no replacement within a pass); its position is training state.

    Prompts of one item (ground truth `{"item": …}`, e.g. both orders of a pair) are served next to each
    other, in a fresh item order every pass, so they usually share a step and pool their votes."""

    def __init__(self, examples: list[Example], seed: int = 0) -> None:
        super().__init__(examples)
        self.seed = seed
        self.pass_index = 0
        self.cursor = 0
        groups: dict[Any, list[int]] = {}
        for i, e in enumerate(examples):
            key = e.ground_truth.get("item", ("row", i)) if isinstance(e.ground_truth, dict) else ("row", i)
            groups.setdefault(str(key), []).append(i)
        self._groups = list(groups.values())

    def _order(self) -> list[int]:
        groups = list(self._groups)
        random.Random(f"{self.seed}-{self.pass_index}").shuffle(groups)
        return [i for group in groups for i in group]

    def sample(self, n: int, rng: random.Random) -> list[Example]:  # noqa: ARG002 - passes use their own order
        out: list[Example] = []
        order = self._order()
        while len(out) < n:
            example = self.examples[order[self.cursor]]
            if isinstance(example.ground_truth, dict):
                example = replace(example, ground_truth={**example.ground_truth, "round": self.pass_index})
            out.append(example)
            self.cursor += 1
            if self.cursor == len(self.examples):
                self.pass_index, self.cursor = self.pass_index + 1, 0
                order = self._order()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pass_index, self.cursor = int(state["pass"]), int(state["cursor"])


def judge_prompts(path: str, seed: int = 0, passes: bool = True) -> Task:
    """Judge training prompts from jsonl (`prompt`, `answer`, optional `domain`, `demonstration`)."""
    from embedkit.data import iter_json_lines

    examples = []
    for line, record in iter_json_lines(path):
        for name in ("prompt", "answer"):
            if name not in record:
                raise DataFormatError("missing field", path=path, line=line, field=name, fields_found=record)
        examples.append(Example(str(record["prompt"]), record["answer"], str(record.get("domain", "default")),
                                record.get("demonstration")))  # fmt: skip
    if not examples:
        raise DataFormatError("no training prompts", path=path)
    return PassTask(examples, seed) if passes else Task(examples)


STATE_DIR = "task_state"
_STEP_RE = re.compile(r"^step-(\d+)\.json$")


class GRMTrainer(RLTrainer):
    """`RLTrainer` whose task state (the position in the current pass of `judge_prompts`) is checkpointed too.

    The RL trainer itself saves the reward's state (ConsistRM's per-item memory) in `trainer_state.pt`. The
    task's state of step N is written to `<output_dir>/task_state/step-N.json` before the checkpoint
    itself, so every checkpoint that exists has it; a resume reads the state of its step.
    """

    _domain_metrics: dict[str, float] = {}  # the current step's per-domain contributions (set in prepare)

    def prepare(self, trajectories: list[Any], rewards: list[float], domains: list[str]) -> Prepared:
        prep = super().prepare(trajectories, rewards, domains)
        self._domain_metrics = domain_contributions(prep, domains)
        return prep

    def step(self, step: int) -> dict[str, Any]:
        self._domain_metrics = {}
        metrics = super().step(step)
        metrics.update(self._domain_metrics)
        return metrics

    def _stateful(self) -> dict[str, Any]:
        return {"task": self.task} if callable(getattr(self.task, "state_dict", None)) else {}

    def save_checkpoint(self, step: int) -> Path:
        parts = self._stateful()
        if parts and self.accelerator.is_main_process:
            with atomic_write(self.output_dir / STATE_DIR / f"step-{step}.json") as handle:
                json.dump({name: part.state_dict() for name, part in parts.items()}, handle)
        target = super().save_checkpoint(step)
        if self.accelerator.is_main_process:
            self._prune_states()
        return target

    def _prune_states(self) -> None:
        folder, checkpoints = self.output_dir / STATE_DIR, self.output_dir / "checkpoints"
        kept = {p.name for p in checkpoints.iterdir()} if checkpoints.is_dir() else set()
        for path in folder.iterdir() if folder.is_dir() else []:
            if (m := _STEP_RE.match(path.name)) and f"step-{m.group(1)}" not in kept:
                path.unlink(missing_ok=True)

    def _load_state(self, checkpoint: Path) -> None:
        super()._load_state(checkpoint)
        parts = self._stateful()
        if not parts:
            return
        path = self.output_dir / STATE_DIR / f"step-{self.start_step}.json"
        if not path.is_file():
            raise EmbedkitError(f"{checkpoint}: no task state at {path}; the position in the pass cannot be "
                                "restored (start fresh with trainer.resume=false or --no-resume)")  # fmt: skip
        state = json.loads(path.read_text(encoding="utf-8"))
        for name, part in parts.items():
            if name in state:
                part.load_state_dict(state[name])


def domain_contributions(prep: Prepared, domains: Sequence[str]) -> dict[str, float]:
    """Per domain: responses whose advantage is non-zero on some token (in the loss) and the mean |advantage|
    over its response tokens."""
    weight = (prep.advantages.abs() * prep.mask).detach().cpu()
    tokens = prep.mask.detach().cpu()
    out: dict[str, float] = {}
    for index, name in enumerate(sorted(set(domains))):
        rows = prep.domain_of_row == index
        out[f"trained_rows/{name}"] = float((weight[rows].sum(-1) > 0).sum())
        out[f"advantage_abs/{name}"] = float(weight[rows].sum() / tokens[rows].sum().clamp_min(1))
    return out


def train_grm(config: RLConfig, **pieces: Any) -> list[dict]:
    """Train a judge (or an ACPO policy) from `config` with its reward/task state checkpointed."""
    return GRMTrainer(config, **pieces).train()


# -- training-prompt builders ---------------------------------------------------------------------------------
def consistrm_records(pairs: Sequence[PreferencePair], *, demonstrations: bool = False, seed: int = 0) -> list[dict]:
    """Both presentation orders of every pair as ConsistRM judge prompts. The ground truth carries the item
    and the order (the reward needs nothing else); `preferred` is there for monitoring only
    (`metric_rewards: [reflectrm_response]`), never for the ConsistRM reward."""
    from agents.rewards.consistrm import render_pairwise

    rng = random.Random(seed)
    records = []
    for pair in pairs:
        for swapped in (False, True):
            a, b = pair.shown(swapped)
            record = {"prompt": render_pairwise(pair.prompt, a, b),
                      "answer": {"item": pair.id, "swapped": swapped, "preferred": "B" if swapped else "A"},
                      "domain": pair.subset}  # fmt: skip
            if demonstrations:  # format only: the letter is random, so the warm-up teaches no answer
                record["demonstration"] = f"<critique>ok</critique> <verdict>{rng.choice('AB')}</verdict>"
            records.append(record)
    return records


def acpo_records(pairs: Sequence[PreferencePair], *, long_form_subsets: Iterable[str] = ()) -> list[dict]:
    """One policy prompt per distinct query of the pairs (ACPO trains the policy, the judge scores it)."""
    long_form = set(long_form_subsets)
    seen: dict[str, dict] = {}
    for pair in pairs:
        seen.setdefault(pair.prompt, {"prompt": pair.prompt, "answer": {"long_form": pair.subset in long_form},
                                      "domain": pair.subset})  # fmt: skip
    return list(seen.values())


def write_records_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    path = Path(path)
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
