"""ReflectRM: one generative judge trained on two preferences, and self-reflection at inference.

Training tasks (one run trains both: the `reflectrm` reward dispatches on each prompt's `task`):
- response preference: the judge's `<verdict>A|B</verdict>` matches the preferred response;
- analysis preference: shown several analyses of a pair, the judge's `<choice>k</choice>` picks a reliable one
  (an analysis whose verdict matches the preferred response).

`reflectrm_records` builds both from labelled pairs: every pair in both orders for the response task; for the
analysis task it samples `n_analyses` analyses per pair with the judge being trained, labels which reached the
right verdict (`label_analyses`), keeps the informative sets (some right, some wrong) and mixes the two tasks
at `ratio` response prompts per analysis prompt. The default 4:1 is our reading of the paper (its data
section mixes preference and reflection data at 4:1); treat it as inferred, not as a published constant.

Inference (`ReflectRM.judge`): sample `n_analyses` analyses, ask the same judge which analysis is most reliable
with the analyses listed in both orders (forward and reversed, so the reflection step has no position bias of
its own), and take the verdict of the analysis chosen most often; when the two orders disagree and their
analyses disagree too, or no choice can be read, the majority verdict of all analyses decides.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.llm import LLMBackend
from agents.rewards.pairs import PreferencePair
from agents.rewards.parsing import last_tag, parse_choice
from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn

ANALYSIS_PROMPT = """You are an impartial judge. Analyse both responses to the query step by step, then give \
your verdict as <verdict>A</verdict> or <verdict>B</verdict>.

Query: {query}

Response A: {a}

Response B: {b}
"""

REFLECT_PROMPT = """You are checking the work of several judges who compared two responses to a query. Decide \
which analysis is the most reliable (correct reasoning, faithful to the responses) and answer with \
<choice>NUMBER</choice>.

Query: {query}

Response A: {a}

Response B: {b}

{analyses}
"""

DEFAULT_RATIO = 4.0  # response-preference prompts per analysis-preference prompt (inferred from the paper)


@dataclass
class ReflectVerdict:
    preferred: str | None  # "A", "B" or None
    chosen: int | None  # index of the analysis the verdict came from
    analyses: list[str]
    verdicts: list[str | None]
    choices: tuple[int | None, ...] = ()  # the analysis picked with the listing forward, then reversed


def parse_choice_index(text: str, n: int) -> int | None:
    """The 1-based `<choice>` number as a 0-based index, when in range."""
    choice = last_tag(text, "choice")
    if choice is None:
        return None
    digits = re.findall(r"\d+", choice)
    if not digits:
        return None
    k = int(digits[0]) - 1
    return k if 0 <= k < n else None


def render_analysis_prompt(query: str, a: str, b: str) -> str:
    return ANALYSIS_PROMPT.format(query=query, a=a, b=b)


def render_reflect_prompt(query: str, a: str, b: str, analyses: Sequence[str]) -> str:
    listing = "\n\n".join(f"Analysis {i + 1}:\n{text}" for i, text in enumerate(analyses))
    return REFLECT_PROMPT.format(query=query, a=a, b=b, analyses=listing)


def _majority(verdicts: Sequence[str | None]) -> str | None:
    votes = Counter(v for v in verdicts if v in ("A", "B")).most_common()
    if not votes or (len(votes) > 1 and votes[0][1] == votes[1][1]):
        return None
    return votes[0][0]


def decide(verdicts: Sequence[str | None], choices: Sequence[int | None]) -> tuple[str | None, int | None]:
    """(verdict, analysis index) from the analyses' verdicts and the reflection choices of each order."""
    picked = [c for c in choices if c is not None and verdicts[c] in ("A", "B")]
    if picked:
        counts = Counter(picked).most_common()
        top = [c for c, k in counts if k == counts[0][1]]
        top_verdicts = {verdicts[c] for c in top}
        if len(top_verdicts) == 1:  # one most-chosen analysis, or tied ones that agree
            first = next(c for c in picked if c in top)  # the forward order's pick when it is among them
            return verdicts[first], first
    return _majority(verdicts), None


class ReflectRM:
    """A pairwise judge with sampled analyses and a reflection step in both listing orders."""

    def __init__(self, backend: LLMBackend, *, n_analyses: int = 4, temperature: float = 0.8,
                 max_new_tokens: int = 512, reflect_max_new_tokens: int = 64) -> None:  # fmt: skip
        self.backend = backend
        self.n_analyses = n_analyses
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.reflect_max_new_tokens = reflect_max_new_tokens

    def judge(self, query: str, response_a: str, response_b: str) -> ReflectVerdict:
        return self.judge_many([(query, response_a, response_b)])[0]

    def judge_many(self, items: Sequence[tuple[str, str, str]]) -> list[ReflectVerdict]:
        """Two backend calls for the whole batch: every analysis, then every reflection (both orders)."""
        n = self.n_analyses
        prompts = [render_analysis_prompt(q, a, b) for q, a, b in items for _ in range(n)]
        texts = self.backend.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      stop=None)  # fmt: skip
        analyses = [texts[k * n : (k + 1) * n] for k in range(len(items))]
        reflect = []
        for (q, a, b), group in zip(items, analyses, strict=True):
            reflect += [render_reflect_prompt(q, a, b, group), render_reflect_prompt(q, a, b, group[::-1])]
        replies = self.backend.generate(reflect, max_new_tokens=self.reflect_max_new_tokens, temperature=0.0, stop=None)
        out = []
        for k, group in enumerate(analyses):
            verdicts = [parse_choice(t) for t in group]
            forward = parse_choice_index(replies[2 * k], n)
            backward = parse_choice_index(replies[2 * k + 1], n)
            choices = (forward, None if backward is None else n - 1 - backward)
            preferred, chosen = decide(verdicts, choices)
            out.append(ReflectVerdict(preferred, chosen, list(group), verdicts, choices))
        return out


def reflectrm_judge(backend: LLMBackend, **options: Any) -> Any:
    """ReflectRM as an evaluation judge (`agents.rewards.judges.JUDGES`)."""
    from agents.rewards.judges import JudgeOutput

    reflect = ReflectRM(backend, **options)

    class _Judge:
        def judge(self, items: Sequence[Any]) -> list[JudgeOutput]:
            results = reflect.judge_many([(i.prompt, i.a, i.b) for i in items])
            return [JudgeOutput(r.preferred, r.analyses[r.chosen] if r.chosen is not None else "\n---\n".join(r.analyses),
                                {"verdicts": r.verdicts, "choices": list(r.choices), "chosen": r.chosen})
                    for r in results]  # fmt: skip

    return _Judge()


# -- training data ------------------------------------------------------------------------------------------
def label_analyses(analyses: Sequence[str], preferred: str) -> list[int]:
    """Indices of the analyses whose verdict names the preferred response ("A" or "B")."""
    return [i for i, text in enumerate(analyses) if parse_choice(text) == preferred.upper()]


def reflectrm_records(pairs: Sequence[PreferencePair], backend: LLMBackend | None, *, n_analyses: int = 4,
                      ratio: float = DEFAULT_RATIO, temperature: float = 1.0, max_new_tokens: int = 256,
                      seed: int = 0, demonstrations: bool = False) -> list[dict]:  # fmt: skip
    """Training prompts of both tasks from labelled pairs (`PreferencePair`s).

    Response task: each pair in both orders, ground truth `{"task": "response", "preferred": "A"|"B"}`.
    Analysis task: `n_analyses` sampled analyses of the pair (in a random order) listed for the judge,
    ground truth `{"task": "analysis", "reliable": [...], "n": n_analyses}`; only sets with both right and
    wrong analyses teach anything, so only those are kept, at most one per `ratio` response prompts.
    `backend=None` builds the response task alone. `demonstrations` adds format-only demonstrations (a random
    letter or analysis number) for a supervised warm-up."""
    rng = random.Random(seed)
    records = []
    for pair in pairs:
        for swapped in (False, True):
            a, b = pair.shown(swapped)
            record = {"prompt": render_analysis_prompt(pair.prompt, a, b),
                      "answer": {"task": "response", "preferred": "B" if swapped else "A", "item": pair.id},
                      "domain": "response"}  # fmt: skip
            if demonstrations:
                record["demonstration"] = f"<verdict>{rng.choice('AB')}</verdict>"
            records.append(record)
    if backend is None or ratio <= 0:
        return records
    wanted = int(round(len(records) / ratio))
    shown = [(pair, rng.random() < 0.5) for pair in pairs]
    prompts = []
    for pair, swapped in shown:
        a, b = pair.shown(swapped)
        prompts += [render_analysis_prompt(pair.prompt, a, b)] * n_analyses
    texts = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=None)
    analysis_records = []
    for k, (pair, swapped) in enumerate(shown):
        group = texts[k * n_analyses : (k + 1) * n_analyses]
        reliable = label_analyses(group, "B" if swapped else "A")
        if not reliable or len(reliable) == len(group):
            continue
        a, b = pair.shown(swapped)
        record = {"prompt": render_reflect_prompt(pair.prompt, a, b, group),
                  "answer": {"task": "analysis", "reliable": reliable, "n": len(group), "item": pair.id},
                  "domain": "analysis"}  # fmt: skip
        if demonstrations:
            record["demonstration"] = f"<choice>{rng.randrange(len(group)) + 1}</choice>"
        analysis_records.append(record)
    rng.shuffle(analysis_records)
    records += analysis_records[:wanted]
    rng.shuffle(records)
    return records


# -- rewards ------------------------------------------------------------------------------------------------
def _preferred(gt: Any) -> str:
    return str(gt["preferred"] if isinstance(gt, dict) else gt).strip().upper()


def response_preference_score(text: str, preferred: str, format_penalty: float = -1.0) -> float:
    verdict = parse_choice(text)
    if verdict is None:
        return format_penalty
    return 1.0 if verdict == preferred.upper() else 0.0


def analysis_preference_score(text: str, reliable: list[int], n: int, format_penalty: float = -1.0) -> float:
    """1 when the chosen analysis (1-based `<choice>`) is one of the `reliable` (0-based) ones."""
    index = parse_choice_index(text, n)
    if index is None:
        return format_penalty
    return 1.0 if index in reliable else 0.0


@REWARDS.register("reflectrm_response")
def reflectrm_response(format_penalty: float = -1.0) -> RewardFn:
    """Ground truth: "A" / "B" or {"preferred": "A"}."""

    def reward(batch: RewardBatch) -> list[float]:
        return [response_preference_score(r, _preferred(g), format_penalty)
                for r, g in zip(batch.responses, batch.ground_truths, strict=True)]  # fmt: skip

    return reward


@REWARDS.register("reflectrm_analysis")
def reflectrm_analysis(format_penalty: float = -1.0) -> RewardFn:
    """Ground truth: {"reliable": [indices of analyses whose verdict is right], "n": number shown}."""

    def reward(batch: RewardBatch) -> list[float]:
        return [analysis_preference_score(r, list(g["reliable"]), int(g["n"]), format_penalty)
                for r, g in zip(batch.responses, batch.ground_truths, strict=True)]  # fmt: skip

    return reward


@REWARDS.register("reflectrm")
def reflectrm(format_penalty: float = -1.0) -> RewardFn:
    """Joint training: each prompt's ground truth names its `task` ("response" or "analysis")."""

    def score(response: str, gt: Any) -> float:
        task = gt.get("task", "response") if isinstance(gt, dict) else "response"
        if task == "analysis":
            return analysis_preference_score(response, list(gt["reliable"]), int(gt["n"]), format_penalty)
        if task == "response":
            return response_preference_score(response, _preferred(gt), format_penalty)
        raise ValueError(f"unknown ReflectRM task '{task}' (expected response or analysis)")

    def reward(batch: RewardBatch) -> list[float]:
        return [score(r, g) for r, g in zip(batch.responses, batch.ground_truths, strict=True)]

    return reward
