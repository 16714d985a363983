"""AC-GenRM (adaptive-criteria generative reward model) and the ACPO policy reward.

The judge first writes query-specific criteria, then compares two responses against them; each comparison
randomly swaps which response is shown first (and maps the verdict back) to cancel position bias.

ACPO reward of response i in a group of G responses to one query:
    round robin:  +2 for every pairwise win, −2 for every loss (ties 0), judged on the responses with their
                  planning text (`<plan>…</plan>`, `<think>…</think>`) stripped;
    structure:    −5 when a long-form task's response skips planning, or a short-form task's response plans;
    length:       min(cap, coef · words / unit) on long-form tasks (cap 5; 0 on short-form tasks).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from agents.llm import LLMBackend, build_backend
from agents.rewards.parsing import last_tag, parse_choice
from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn

PLAN_RE = re.compile(r"<(plan|think)>.*?</\1>", re.DOTALL | re.IGNORECASE)

CRITERIA_PROMPT = """Write the criteria a careful expert would use to judge answers to this query, specific to \
the query, inside <criteria>…</criteria>.

Query: {query}
"""

COMPARE_PROMPT = """Judge two responses to the query against the criteria. Reason briefly, then answer \
<verdict>A</verdict>, <verdict>B</verdict> or <verdict>tie</verdict>.

Query: {query}

Criteria: {criteria}

Response A: {a}

Response B: {b}
"""


def strip_planning(text: str) -> str:
    """The response without its planning blocks (what the judge sees)."""
    return " ".join(PLAN_RE.sub(" ", text).split())


def has_planning(text: str) -> bool:
    return PLAN_RE.search(text) is not None


def structure_penalty(text: str, long_form: bool, penalty: float = -5.0) -> float:
    """`penalty` when a long-form response skips planning or a short-form response plans."""
    return penalty if has_planning(text) != long_form else 0.0


def length_term(text: str, long_form: bool, *, coef: float = 1.0, unit: int = 100, cap: float = 5.0) -> float:
    """min(cap, coef · words / unit) for long-form tasks (planning excluded), 0 for short-form tasks."""
    if not long_form:
        return 0.0
    return min(cap, coef * len(strip_planning(text).split()) / unit)


def round_robin_scores(n: int, compare: Callable[[int, int], int], *, win: float = 2.0,
                       loss: float = -2.0) -> list[float]:  # fmt: skip
    """Every unordered pair once: compare(i, j) > 0 means i wins, < 0 j wins, 0 a tie."""
    scores = [0.0] * n
    for i, j in itertools.combinations(range(n), 2):
        outcome = compare(i, j)
        if outcome > 0:
            scores[i] += win
            scores[j] += loss
        elif outcome < 0:
            scores[j] += win
            scores[i] += loss
    return scores


class ACGenRM:
    """Criteria-first pairwise judge over any `LLMBackend`."""

    def __init__(self, backend: LLMBackend, *, seed: int = 0, max_new_tokens: int = 512,
                 temperature: float = 0.0) -> None:  # fmt: skip
        self.backend = backend
        self.rng = random.Random(seed)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def criteria(self, query: str) -> str:
        text = self.backend.generate([CRITERIA_PROMPT.format(query=query)], max_new_tokens=self.max_new_tokens,
                                     temperature=self.temperature, stop=None)[0]  # fmt: skip
        return last_tag(text, "criteria") or text.strip()

    def compare(self, query: str, a: str, b: str, criteria: str) -> int:
        """+1 when `a` is better, −1 when `b` is, 0 on a tie or an unreadable verdict."""
        swap = self.rng.random() < 0.5
        first, second = (b, a) if swap else (a, b)
        text = self.backend.generate([COMPARE_PROMPT.format(query=query, criteria=criteria, a=first, b=second)],
                                     max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                     stop=None)[0]  # fmt: skip
        verdict = parse_choice(text)
        if verdict not in ("A", "B"):
            return 0
        first_wins = verdict == "A"
        return (-1 if first_wins else 1) if swap else (1 if first_wins else -1)


def acpo_rewards(query: str, responses: Sequence[str], judge: ACGenRM, *, long_form: bool,
                 win: float = 2.0, loss: float = -2.0, penalty: float = -5.0, length_coef: float = 1.0,
                 length_unit: int = 100, length_cap: float = 5.0) -> list[float]:  # fmt: skip
    """ACPO rewards of one group of responses to `query`."""
    stripped = [strip_planning(r) for r in responses]
    criteria = judge.criteria(query)
    pairwise = round_robin_scores(len(responses), lambda i, j: judge.compare(query, stripped[i], stripped[j], criteria),
                                  win=win, loss=loss)  # fmt: skip
    return [p + structure_penalty(r, long_form, penalty)
            + length_term(r, long_form, coef=length_coef, unit=length_unit, cap=length_cap)
            for p, r in zip(pairwise, responses, strict=True)]  # fmt: skip


def _long_form(gt: Any, default: bool) -> bool:
    return bool(gt.get("long_form", default)) if isinstance(gt, dict) else default


@REWARDS.register("acpo")
def acpo(backend: dict[str, Any], long_form: bool = False, seed: int = 0, win: float = 2.0, loss: float = -2.0,
         penalty: float = -5.0, length_coef: float = 1.0, length_unit: int = 100,
         length_cap: float = 5.0) -> RewardFn:  # fmt: skip
    """`backend` is an `agents.llm.BackendConfig` mapping; a ground truth {"long_form": bool} overrides
    `long_form` per prompt."""
    judge = ACGenRM(build_backend(backend), seed=seed)

    def reward(batch: RewardBatch) -> list[float]:
        groups = batch.group_ids or [0] * len(batch.responses)
        out = [0.0] * len(batch.responses)
        for gid in dict.fromkeys(groups):
            rows = [i for i, g in enumerate(groups) if g == gid]
            scores = acpo_rewards(batch.prompts[rows[0]], [batch.responses[i] for i in rows], judge,
                                  long_form=_long_form(batch.ground_truths[rows[0]], long_form), win=win,
                                  loss=loss, penalty=penalty, length_coef=length_coef, length_unit=length_unit,
                                  length_cap=length_cap)  # fmt: skip
            for i, s in zip(rows, scores, strict=True):
                out[i] = s
        return out

    return reward
