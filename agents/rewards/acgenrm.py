"""AC-GenRM (adaptive-criteria generative reward model) and the ACPO policy reward.

The judge first writes query-specific criteria, then compares two responses against them. To cancel position
bias, `orders="both"` (the default) judges every pair in both presentation orders and counts a win only when
the two verdicts agree (disagreeing orders are a tie, and are counted in `last_stats`); `orders="random"`
judges one randomly chosen order per pair and maps the verdict back. All comparisons of a batch (the
G(G−1)/2 pairs of every group, times the orders) go to the backend in one `generate` call.

ACPO reward of response i in a group of G responses to one query (UniCreative, arXiv 2604.05517:
R_total = R_rel + R_struct + R_len):
    R_rel     +2 for every pairwise win, −2 for every loss (ties 0), judged on the responses with their
              planning text (`<plan>…</plan>`, `<think>…</think>`) stripped;
    R_struct  −5 when a long-form task's response skips planning, or a short-form task's response plans;
    R_len     `LengthShaping`: by default the paper's asymmetric length regularisation, a penalty of at most
              γ = 5 for a long-form response that is too short or a short-form response that is too long.

Where R_len comes from: the paper's own equation and the official code (github.com/weixiaolong94-hub/UniCreative)
could not be read from here (the pages reached give the abstract only). A paper note (ACL 2026 Findings, three
language versions of one note, citing that repository) says R_len is an asymmetric length regularisation that
penalises long-form responses for being too short and short-form responses for being too long, capped at
γ = 5.0. It gives neither the length unit nor the two thresholds, so those (words outside planning, 500 and
200 words, 1 point per 100 words) are embedkit's choices, each a setting.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.llm import LLMBackend, build_backend
from agents.rewards.parsing import last_tag, parse_pairwise
from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn
from embedkit.config import validate_config

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


LengthMode = Literal["asymmetric", "long_bonus", "none"]
LengthCount = Literal["words", "distinct_words"]


class LengthShaping(BaseModel):
    """ACPO's length term R_len: the `length_*` settings of the `acpo` reward and of verl's `embedkit_acpo`.

        shaping = LengthShaping(length_short_max=100)
        shaping.term("<plan>…</plan> Once upon a time …", long_form=True)  # −min(5, (500 − L) / 100)

    L counts the response's words outside planning. `length_mode`:
      "asymmetric" (default, R_len as the paper note describes it):
          long form −min(cap, coef · max(0, long_min − L) / unit),
          short form −min(cap, coef · max(0, L − short_max) / unit);
      "long_bonus" (embedkit's earlier reading, not the paper's): long form +min(cap, coef · L / unit), short
          form 0. With long_min = cap · unit / coef (the defaults) its long-form values are the asymmetric ones
          plus cap, so a group-normalised estimator (GRPO) sees the same long-form advantages from both;
      "none": 0.
    `length_count="distinct_words"` (not the paper's) counts a long-form response's distinct lower-cased words
    without punctuation, so repeating text to reach long_min earns nothing; a short-form response's excess
    still counts every word, so repeating text still costs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length_mode: LengthMode = "asymmetric"
    length_count: LengthCount = "words"
    length_coef: float = Field(1.0, ge=0)
    length_unit: int = Field(100, gt=0, description="words per `length_coef` points")
    length_cap: float = Field(5.0, ge=0, description="γ: the most the term moves a reward")
    length_long_min: int = Field(500, ge=0, description="words below which a long-form response pays")
    length_short_max: int = Field(200, ge=0, description="words above which a short-form response pays")

    def term(self, text: str, long_form: bool) -> float:
        """R_len of one response (planning excluded from its length)."""
        if self.length_mode == "none" or (self.length_mode == "long_bonus" and not long_form):
            return 0.0
        words = strip_planning(text).split()
        if long_form and self.length_count == "distinct_words":
            words = list({w.strip(".,;:!?\"'()[]").lower() for w in words} - {""})
        if self.length_mode == "long_bonus":
            return self._capped(len(words))
        gap = self.length_long_min - len(words) if long_form else len(words) - self.length_short_max
        return -self._capped(max(0, gap))

    def _capped(self, words: int) -> float:
        return min(self.length_cap, self.length_coef * words / self.length_unit)


def length_term(text: str, long_form: bool, **settings: Any) -> float:
    """R_len of one response under `LengthShaping(**settings)`: `length_term(text, True, length_mode="none")`."""
    return LengthShaping(**settings).term(text, long_form)


def read_length_shaping(settings: dict[str, Any], *, where: str = "reward.params") -> LengthShaping:
    """`LengthShaping` from `length_*` settings; a bad one is a `DataFormatError` naming it and `where`."""
    shaping = validate_config(LengthShaping, settings, path=where)
    assert isinstance(shaping, LengthShaping)
    return shaping


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
                       loss: float = -2.0, penalty: float = -5.0,
                       length: LengthShaping | None = None) -> list[list[float]]:  # fmt: skip
    """ACPO rewards of several groups (query, responses, long_form): one backend call for all criteria and
    one for all G(G−1)/2 comparisons of every group. `length`: R_len's settings (default: the paper's)."""
    length = LengthShaping() if length is None else length
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
        out.append([p + structure_penalty(r, long_form, penalty) + length.term(r, long_form)
                    for p, r in zip(pairwise, responses, strict=True)])  # fmt: skip
    return out


def acpo_rewards(query: str, responses: Sequence[str], judge: ACGenRM, *, long_form: bool,
                 win: float = 2.0, loss: float = -2.0, penalty: float = -5.0,
                 length: LengthShaping | None = None) -> list[float]:  # fmt: skip
    """ACPO rewards of one group of responses to `query`."""
    return acpo_group_rewards([(query, responses, long_form)], judge, win=win, loss=loss, penalty=penalty,
                              length=length)[0]  # fmt: skip


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
         penalty: float = -5.0, orders: str = "both", max_new_tokens: int = 512, **length: Any) -> RewardFn:  # fmt: skip
    """`backend` is an `agents.llm.BackendConfig` mapping; a ground truth {"long_form": bool} overrides
    `long_form` per prompt; `length`: `LengthShaping`'s `length_*` settings (default: the paper's R_len). One
    backend call scores every group of the batch."""
    shaping = read_length_shaping(length)
    judge = ACGenRM(build_backend(backend), seed=seed, orders=orders, max_new_tokens=max_new_tokens)

    def reward(batch: RewardBatch) -> list[float]:
        groups = batch.group_ids or [0] * len(batch.responses)
        rows_of = {gid: [i for i, g in enumerate(groups) if g == gid] for gid in dict.fromkeys(groups)}
        specs = [(batch.prompts[rows[0]], [batch.responses[i] for i in rows],
                  _long_form(batch.ground_truths[rows[0]], long_form)) for rows in rows_of.values()]  # fmt: skip
        scores = acpo_group_rewards(specs, judge, win=win, loss=loss, penalty=penalty, length=shaping)
        out = [0.0] * len(batch.responses)
        for rows, group_scores_ in zip(rows_of.values(), scores, strict=True):
            for i, value in zip(rows, group_scores_, strict=True):
                out[i] = value
        return out

    return reward
