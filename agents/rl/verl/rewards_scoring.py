"""What the verl reward managers compute, without verl: judge settings and group scoring with a served judge.

    settings = read_settings(ACPOSettings, {"judge": {"base_url": "http://127.0.0.1:8000", "model": "acgenrm"}})
    scored = score_groups("acgenrm", settings, [("Write a poem", ["<plan>…</plan> roses", "roses"], False)])
    scored.rewards  # one list of floats per group

A group is the responses of one prompt. Every judge kind ranks a group by a round robin over all its pairs
(`agents.rewards.acgenrm.round_robin_scores`): +`win` for each pairwise win, `loss` for each loss, 0 for a tie.

- `acgenrm` is ACPO (UniCreative, arXiv 2604.05517, §"reward composition"): R = R_rel + R_struct + R_len with
  R_rel the ±2 round robin of AC-GenRM on the responses with their planning stripped, R_struct −5 when a
  long-form response skips planning or a short-form one plans, R_len the asymmetric length penalty (at most 5:
  long-form responses under `length_long_min` words, short-form ones over `length_short_max`;
  `agents.rewards.acgenrm.LengthShaping` says which parts are the paper's); computed by
  `agents.rewards.acgenrm.acpo_group_rewards`, the same code `embedkit rl train` runs.
- `consistrm` and `reflectrm` use those judges (`agents.rewards.judges.JUDGES`) for the round robin and add
  no shaping: their papers train the judges, they define no policy reward beyond the judge's verdicts.

Pairs are judged in both presentation orders by default (`orders="both"`: a win counts only when the two
verdicts agree, so a position-biased judge gives a tie); `orders="random"` judges one random order per pair,
the paper's 50% swap. An unreadable verdict is a tie and is counted (`GroupScores.stats["unreadable"]`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

from agents.llm import BackendConfig, LLMBackend, build_backend
from agents.rewards.acgenrm import LengthShaping
from embedkit.config import validate_config
from embedkit.errors import EmbedkitError

JUDGE_KINDS = ("acgenrm", "consistrm", "reflectrm")
JudgeKind = Literal["acgenrm", "consistrm", "reflectrm"]


class GroupSettings(BaseModel):
    """`group_size`: responses per prompt (default: `actor_rollout_ref.rollout.n`); a group is scored when that
    many have arrived, or after `group_wait_s` with those that did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_size: int | None = None
    group_wait_s: float = 600.0

    @field_validator("group_size")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("group_size must be at least 1")
        return value


class JudgeRewardSettings(GroupSettings):
    """`reward.reward_kwargs` of an embedkit judge reward manager (verl's own config section).

    `judge`: the OpenAI-compatible server (`base_url`, `model`, `timeout`, `max_retries`, `concurrency`,
    `api_key_env`). `on_judge_error`: "raise" fails the step with the server's error, "zero" gives the group
    reward 0 and `judge_error=1`."""

    judge: BackendConfig
    on_judge_error: Literal["raise", "zero"] = "raise"
    orders: Literal["both", "random"] = "both"
    seed: int = 0
    win: float = 2.0
    loss: float = -2.0
    judge_options: dict[str, Any] = {}  # passed to the judge (e.g. ReflectRM's n_analyses, max_new_tokens)

    @field_validator("judge")
    @classmethod
    def _served(cls, value: BackendConfig) -> BackendConfig:
        if value.kind != "openai":
            raise ValueError("the judge must be served by an OpenAI-compatible server (judge.kind: openai)")
        return value


class ACPOSettings(JudgeRewardSettings, LengthShaping):
    """ACPO's terms on top of the round robin (defaults: the paper's +2/−2, −5 and R_len capped at 5); the
    `length_*` settings are `LengthShaping`'s."""

    long_form: bool = False  # per prompt: ground truth or extra_info {"long_form": true} overrides it
    penalty: float = -5.0
    max_new_tokens: int = 512


class ConsistRMTrainSettings(GroupSettings):
    """Training a ConsistRM judge in verl (the policy is the judge): `agents.rewards.consistrm.consistrm`'s
    parameters. `model`: the embedkit encoder for the critique-consistency bonus (null: no bonus)."""

    model: str | None = None
    top_p: float = 0.5
    bonus: float = 0.1
    format_penalty: float = -5.0
    tie_reward: float = 0.0
    mode: Literal["auto", "pairwise", "pointwise"] = "auto"
    seed_scores: str | None = None


S = TypeVar("S", bound=GroupSettings)
SETTINGS: dict[str, type[JudgeRewardSettings]] = {"acgenrm": ACPOSettings, "consistrm": JudgeRewardSettings,
                                                  "reflectrm": JudgeRewardSettings}  # fmt: skip


def read_settings(model: type[S], data: Mapping[str, Any] | None, *, where: str = "reward.reward_kwargs") -> S:
    """Validate a reward_kwargs mapping; a bad or missing field is a `DataFormatError` naming `where.field`."""
    settings = validate_config(model, dict(data or {}), path=where)
    assert isinstance(settings, model)
    return settings


@dataclass
class GroupScores:
    rewards: list[list[float]]
    stats: dict[str, int] = field(default_factory=dict)


def pair_outcomes(judge: Any, comparisons: Sequence[tuple[str, str, str]], *, orders: str = "both",
                  rng: random.Random | None = None) -> tuple[list[int], dict[str, int]]:  # fmt: skip
    """+1 / −1 / 0 for each (query, first, second) from a pairwise judge (`JUDGES`), all in one `judge` call.

    With `orders="both"` each pair is shown both ways and counts only when the verdicts agree."""
    from agents.rewards.judges import JudgeItem

    rng = rng or random.Random(0)
    items, plan = [], []
    for k, (query, a, b) in enumerate(comparisons):
        swaps = (False, True) if orders == "both" else (rng.random() < 0.5,)
        for swap in swaps:
            items.append(JudgeItem(query, b, a) if swap else JudgeItem(query, a, b))
            plan.append((k, swap))
    votes: list[list[int]] = [[] for _ in comparisons]
    unreadable = 0
    for (k, swap), out in zip(plan, judge.judge(items) if items else [], strict=True):
        unreadable += out.verdict is None
        vote = 1 if out.verdict == "A" else -1 if out.verdict == "B" else 0
        votes[k].append(-vote if swap else vote)
    outcomes = [vs[0] if len(set(vs)) == 1 else 0 for vs in votes]
    disagree = sum(len(set(vs)) > 1 for vs in votes)
    return outcomes, {"comparisons": len(comparisons), "judge_calls": len(items), "unreadable": unreadable,
                      "order_inconsistent": disagree}  # fmt: skip


def score_groups(kind: str, settings: JudgeRewardSettings, groups: Sequence[tuple[str, Sequence[str], bool]],
                 backend: LLMBackend | None = None) -> GroupScores:  # fmt: skip
    """Rewards of each (query, responses, long_form) group from the served `kind` judge."""
    from agents.rewards.acgenrm import ACGenRM, acpo_group_rewards, group_scores

    if kind not in JUDGE_KINDS:
        raise EmbedkitError(f"unknown judge kind '{kind}'; choose one of: {', '.join(JUDGE_KINDS)}")
    backend = backend or build_backend(settings.judge)
    if kind == "acgenrm":
        assert isinstance(settings, ACPOSettings)
        judge = ACGenRM(backend, seed=settings.seed, orders=settings.orders, max_new_tokens=settings.max_new_tokens)
        rewards = acpo_group_rewards(groups, judge, win=settings.win, loss=settings.loss, penalty=settings.penalty,
                                     length=settings)  # fmt: skip
        return GroupScores(rewards, dict(judge.last_stats))
    from agents.rewards.judges import build_judge

    pairwise = build_judge(kind, backend, **settings.judge_options)
    comparisons, where = [], []
    for g, (query, responses, _) in enumerate(groups):
        for i, j in itertools.combinations(range(len(responses)), 2):
            comparisons.append((query, responses[i], responses[j]))
            where.append((g, i, j))
    outcomes, stats = pair_outcomes(pairwise, comparisons, orders=settings.orders, rng=random.Random(settings.seed))
    tables: list[dict[tuple[int, int], int]] = [{} for _ in groups]
    for (g, i, j), outcome in zip(where, outcomes, strict=True):
        tables[g][(i, j)] = outcome
    rewards = [group_scores(table, len(responses), win=settings.win, loss=settings.loss)
               for (_, responses, _), table in zip(groups, tables, strict=True)]  # fmt: skip
    return GroupScores(rewards, stats)
