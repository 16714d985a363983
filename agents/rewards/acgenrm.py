"""AC-GenRM (adaptive-criteria generative reward model) and the ACPO policy reward.

The judge first writes query-specific criteria, then compares two responses against them. To cancel position
bias, `orders="both"` (the default) judges every pair in both presentation orders and counts a win only when
the two verdicts agree (disagreeing orders are a tie, and are counted in `last_stats`); `orders="random"`
judges one randomly chosen order per pair and maps the verdict back. All comparisons of a batch (the
G(G−1)/2 pairs of every group, times the orders) go to the backend in one `generate` call.

ACPO reward of response i in a group of G responses to one query:
    round robin:  +2 for every pairwise win, −2 for every loss (ties 0), judged on the responses with their
                  planning text (`<plan>…</plan>`, `<think>…</think>`) stripped;
    structure:    −5 when a long-form task's response skips planning, or a short-form task's response plans;
    length:       min(cap, coef · L / unit) on long-form tasks (0 on short-form tasks), where L counts the
                  response's words (`length_mode="words"`, the paper's term) or, by default, its distinct
                  words (`"distinct_words"`: repeating text to pad a response earns nothing); `"none"` drops it.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from agents.llm import LLMBackend, build_backend
from agents.rewards.parsing import last_tag, parse_pairwise
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


LENGTH_MODES = ("none", "words", "distinct_words")


def length_term(text: str, long_form: bool, *, coef: float = 1.0, unit: int = 100, cap: float = 5.0,
                mode: str = "words") -> float:  # fmt: skip
    """min(cap, coef · L / unit) for long-form tasks (planning excluded), 0 for short-form tasks; L counts
    words (`mode="words"`), distinct lower-cased words without punctuation (`"distinct_words"`), or is 0."""
    if mode not in LENGTH_MODES:
        raise ValueError(f"length mode must be one of {', '.join(LENGTH_MODES)}, not '{mode}'")
    if not long_form or mode == "none":
        return 0.0
    words = strip_planning(text).split()
    if mode == "distinct_words":
        words = list({w.strip(".,;:!?\"'()[]").lower() for w in words} - {""})
    return min(cap, coef * len(words) / unit)


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
                 temperature: float = 0.0, orders: str = "both") -> None:  # fmt: skip
        if orders not in ("both", "random"):
            raise ValueError(f"orders must be both or random, not '{orders}'")
        self.backend = backend
        self.rng = random.Random(seed)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.orders = orders
        self.last_stats: dict[str, int] = {}

    def _generate(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        return self.backend.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                     stop=None)  # fmt: skip

    def criteria_many(self, queries: Sequence[str]) -> list[str]:
        """Criteria for each query, one backend call for all of them."""
        texts = self._generate([CRITERIA_PROMPT.format(query=q) for q in queries])
        return [last_tag(t, "criteria") or t.strip() for t in texts]

    def criteria(self, query: str) -> str:
        return self.criteria_many([query])[0]

    def verdicts(self, items: Sequence[tuple[str, str, str, str]]) -> list[str | None]:
        """Raw verdicts ("A", "B", "tie" or None) for (query, first, second, criteria) in the order given."""
        texts = self._generate([COMPARE_PROMPT.format(query=q, criteria=c, a=a, b=b) for q, a, b, c in items])
        return [parse_pairwise(t) for t in texts]

    def compare_many(self, comparisons: Sequence[tuple[str, str, str, str]]) -> list[int]:
        """+1 / −1 / 0 (first better, second better, tie or unreadable) for each (query, a, b, criteria); one
        backend call for all of them, in both orders or one random order each."""
        prompts: list[tuple[str, str, str, str]] = []
        plan: list[tuple[int, bool]] = []  # (comparison index, swapped)
        for k, (q, a, b, c) in enumerate(comparisons):
            if self.orders == "both":
                prompts += [(q, a, b, c), (q, b, a, c)]
                plan += [(k, False), (k, True)]
            else:
                swap = self.rng.random() < 0.5
                prompts.append((q, b, a, c) if swap else (q, a, b, c))
                plan.append((k, swap))
        votes: list[list[int]] = [[] for _ in comparisons]
        unreadable = 0
        for (k, swapped), verdict in zip(plan, self.verdicts(prompts), strict=True):
            unreadable += verdict is None
            v = 1 if verdict == "A" else -1 if verdict == "B" else 0
            votes[k].append(-v if swapped else v)
        outcomes = []
        inconsistent = 0
        for vs in votes:
            if len(vs) == 2 and vs[0] != vs[1]:
                inconsistent += 1
            outcomes.append(vs[0] if len(vs) == 1 else (vs[0] if vs[0] == vs[1] else 0))
        self.last_stats = {"comparisons": len(comparisons), "judge_calls": len(prompts),
                           "unreadable": unreadable, "order_inconsistent": inconsistent}  # fmt: skip
        return outcomes

    def compare(self, query: str, a: str, b: str, criteria: str) -> int:
        """+1 when `a` is better, −1 when `b` is, 0 on a tie or an unreadable verdict."""
        return self.compare_many([(query, a, b, criteria)])[0]


def group_scores(outcomes: dict[tuple[int, int], int], n: int, *, win: float = 2.0, loss: float = -2.0) -> list[float]:
    return round_robin_scores(n, lambda i, j: outcomes[(i, j)], win=win, loss=loss)


def acpo_group_rewards(groups: Sequence[tuple[str, Sequence[str], bool]], judge: ACGenRM, *, win: float = 2.0,
                       loss: float = -2.0, penalty: float = -5.0, length_coef: float = 1.0, length_unit: int = 100,
                       length_cap: float = 5.0, length_mode: str = "distinct_words") -> list[list[float]]:  # fmt: skip
    """ACPO rewards of several groups (query, responses, long_form): one backend call for all criteria and
    one for all G(G−1)/2 comparisons of every group."""
    criteria = judge.criteria_many([q for q, _, _ in groups])
    comparisons, where = [], []
    for g, ((query, responses, _), crit) in enumerate(zip(groups, criteria, strict=True)):
        stripped = [strip_planning(r) for r in responses]
        for i, j in itertools.combinations(range(len(responses)), 2):
            comparisons.append((query, stripped[i], stripped[j], crit))
            where.append((g, i, j))
    outcomes = judge.compare_many(comparisons)
    by_group: list[dict[tuple[int, int], int]] = [{} for _ in groups]
    for (g, i, j), outcome in zip(where, outcomes, strict=True):
        by_group[g][(i, j)] = outcome
    out = []
    for (_, responses, long_form), table in zip(groups, by_group, strict=True):
        pairwise = group_scores(table, len(responses), win=win, loss=loss)
        out.append([p + structure_penalty(r, long_form, penalty)
                    + length_term(r, long_form, coef=length_coef, unit=length_unit, cap=length_cap, mode=length_mode)
                    for p, r in zip(pairwise, responses, strict=True)])  # fmt: skip
    return out


def acpo_rewards(query: str, responses: Sequence[str], judge: ACGenRM, *, long_form: bool,
                 win: float = 2.0, loss: float = -2.0, penalty: float = -5.0, length_coef: float = 1.0,
                 length_unit: int = 100, length_cap: float = 5.0, length_mode: str = "distinct_words") -> list[float]:  # fmt: skip
    """ACPO rewards of one group of responses to `query`."""
    return acpo_group_rewards([(query, responses, long_form)], judge, win=win, loss=loss, penalty=penalty,
                              length_coef=length_coef, length_unit=length_unit, length_cap=length_cap,
                              length_mode=length_mode)[0]  # fmt: skip


def acgenrm_judge(backend: LLMBackend, **options: Any) -> Any:
    """AC-GenRM as an evaluation judge: criteria for each query (cached), then one verdict per item in the
    order the harness shows it (the harness swaps orders itself)."""
    from agents.rewards.judges import JudgeOutput

    judge = ACGenRM(backend, **options)
    cache: dict[str, str] = {}

    class _Judge:
        def judge(self, items: Sequence[Any]) -> list[JudgeOutput]:
            missing = list(dict.fromkeys(i.prompt for i in items if i.prompt not in cache))
            cache.update(zip(missing, judge.criteria_many(missing), strict=True))
            texts = judge._generate([COMPARE_PROMPT.format(query=i.prompt, criteria=cache[i.prompt], a=i.a, b=i.b)
                                     for i in items])  # fmt: skip
            return [JudgeOutput(parse_pairwise(t), t, {"criteria": cache[i.prompt]})
                    for i, t in zip(items, texts, strict=True)]  # fmt: skip

    return _Judge()


def _long_form(gt: Any, default: bool) -> bool:
    return bool(gt.get("long_form", default)) if isinstance(gt, dict) else default


@REWARDS.register("acpo")
def acpo(backend: dict[str, Any], long_form: bool = False, seed: int = 0, win: float = 2.0, loss: float = -2.0,
         penalty: float = -5.0, length_coef: float = 1.0, length_unit: int = 100, length_cap: float = 5.0,
         length_mode: str = "distinct_words", orders: str = "both", max_new_tokens: int = 512) -> RewardFn:  # fmt: skip
    """`backend` is an `agents.llm.BackendConfig` mapping; a ground truth {"long_form": bool} overrides
    `long_form` per prompt. One backend call scores every group of the batch."""
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode must be one of {', '.join(LENGTH_MODES)}, not '{length_mode}'")
    judge = ACGenRM(build_backend(backend), seed=seed, orders=orders, max_new_tokens=max_new_tokens)

    def reward(batch: RewardBatch) -> list[float]:
        groups = batch.group_ids or [0] * len(batch.responses)
        rows_of = {gid: [i for i, g in enumerate(groups) if g == gid] for gid in dict.fromkeys(groups)}
        specs = [(batch.prompts[rows[0]], [batch.responses[i] for i in rows],
                  _long_form(batch.ground_truths[rows[0]], long_form)) for rows in rows_of.values()]  # fmt: skip
        scores = acpo_group_rewards(specs, judge, win=win, loss=loss, penalty=penalty, length_coef=length_coef,
                                    length_unit=length_unit, length_cap=length_cap, length_mode=length_mode)  # fmt: skip
        out = [0.0] * len(batch.responses)
        for rows, group_scores_ in zip(rows_of.values(), scores, strict=True):
            for i, value in zip(rows, group_scores_, strict=True):
                out[i] = value
        return out

    return reward
