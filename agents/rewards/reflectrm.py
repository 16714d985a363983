"""ReflectRM: one generative judge trained on two preferences, and self-reflection at inference.

Training signals (rewards for RL on the judge, both registered in `REWARDS`):
- response preference: the judge's `<verdict>A|B</verdict>` matches the preferred response;
- analysis preference: shown several analyses, the judge's `<choice>k</choice>` picks a reliable one (an
  analysis whose verdict matches the preferred response).

Inference (`ReflectRM.judge`): sample `n_analyses` analyses of the pair, ask the same judge which analysis is
most reliable, and take the verdict of that analysis (majority vote when the choice cannot be read).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agents.llm import LLMBackend
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


@dataclass
class ReflectVerdict:
    preferred: str | None  # "A", "B" or None
    chosen: int | None  # index of the analysis the verdict came from
    analyses: list[str]
    verdicts: list[str | None]


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


class ReflectRM:
    """A pairwise judge with sampled analyses and a reflection step."""

    def __init__(self, backend: LLMBackend, *, n_analyses: int = 4, temperature: float = 0.8,
                 max_new_tokens: int = 512) -> None:  # fmt: skip
        self.backend = backend
        self.n_analyses = n_analyses
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens

    def judge(self, query: str, response_a: str, response_b: str) -> ReflectVerdict:
        prompt = ANALYSIS_PROMPT.format(query=query, a=response_a, b=response_b)
        analyses = self.backend.generate([prompt] * self.n_analyses, max_new_tokens=self.max_new_tokens,
                                         temperature=self.temperature, stop=None)  # fmt: skip
        verdicts = [parse_choice(a) for a in analyses]
        listing = "\n\n".join(f"Analysis {i + 1}:\n{a}" for i, a in enumerate(analyses))
        reflection = self.backend.generate(
            [REFLECT_PROMPT.format(query=query, a=response_a, b=response_b, analyses=listing)],
            max_new_tokens=64, temperature=0.0, stop=None,
        )[0]  # fmt: skip
        chosen = parse_choice_index(reflection, len(analyses))
        if chosen is not None and verdicts[chosen] in ("A", "B"):
            return ReflectVerdict(verdicts[chosen], chosen, analyses, verdicts)
        votes = Counter(v for v in verdicts if v in ("A", "B")).most_common()
        if not votes or (len(votes) > 1 and votes[0][1] == votes[1][1]):
            return ReflectVerdict(None, None, analyses, verdicts)
        return ReflectVerdict(votes[0][0], None, analyses, verdicts)


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
