"""Pairwise judges for evaluation (registry `JUDGES`): `pairwise`, `consistrm`, `reflectrm`, `acgenrm`.

A judge sees a batch of (prompt, response A, response B) items in the order the caller presents them and
returns one `JudgeOutput` per item: a verdict "A", "B", "tie", or None when its text holds no readable
verdict. Judges never swap the order themselves: the evaluation harness shows every pair in both orders.

    judge = build_judge("consistrm", build_llm("hf:runs/judge/checkpoints/step-100/policy"))
    outputs = judge.judge([JudgeItem("2+2?", "4", "5")])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.llm import LLMBackend
from agents.rewards.parsing import parse_pairwise
from embedkit.errors import EmbedkitError
from embedkit.registry import Registry

PAIRWISE_PROMPT = """You are an impartial judge. Decide which response answers the query better. Reason \
briefly, then answer <verdict>A</verdict>, <verdict>B</verdict> or <verdict>tie</verdict>.

Query: {query}

Response A: {a}

Response B: {b}
"""


@dataclass(frozen=True)
class JudgeItem:
    prompt: str
    a: str
    b: str


@dataclass
class JudgeOutput:
    verdict: str | None  # "A", "B", "tie" or None (unreadable)
    text: str
    details: dict[str, Any] = field(default_factory=dict)


class PairwiseJudge(Protocol):
    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeOutput]: ...


class PromptJudge:
    """One greedy completion per item from a prompt template with `{query}`, `{a}`, `{b}`."""

    def __init__(self, backend: LLMBackend, template: str = PAIRWISE_PROMPT, *, max_new_tokens: int = 512,
                 temperature: float = 0.0) -> None:  # fmt: skip
        self.backend, self.template = backend, template
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def render(self, item: JudgeItem) -> str:
        return self.template.format(query=item.prompt, a=item.a, b=item.b)

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeOutput]:
        texts = self.backend.generate([self.render(i) for i in items], max_new_tokens=self.max_new_tokens,
                                      temperature=self.temperature, stop=None)  # fmt: skip
        return [JudgeOutput(parse_pairwise(t), t) for t in texts]


JudgeFactory = Callable[..., PairwiseJudge]
JUDGES: Registry[JudgeFactory] = Registry("judge")


@JUDGES.register("pairwise")
def pairwise_judge(backend: LLMBackend, **options: Any) -> PairwiseJudge:
    """A plain pairwise judge: brief reasoning, then a verdict."""
    return PromptJudge(backend, PAIRWISE_PROMPT, **options)


JUDGES.add("consistrm", "agents.rewards.consistrm:consistrm_judge")
JUDGES.add("reflectrm", "agents.rewards.reflectrm:reflectrm_judge")
JUDGES.add("acgenrm", "agents.rewards.acgenrm:acgenrm_judge")


def build_judge(name: str, backend: LLMBackend, **options: Any) -> PairwiseJudge:
    """A registered judge over `backend`; unknown options are a user error naming the judge."""
    factory = JUDGES.get(name)
    try:
        return factory(backend, **options)
    except TypeError as error:
        raise EmbedkitError(f"judge '{name}': bad options: {error}") from None


def build_llm(spec: str, *, model: str | None = None, batch_size: int = 8, timeout: float = 60.0) -> LLMBackend:
    """An `LLMBackend` from `hf:PATH` (a local causal LM or hub id) or `openai:URL` (any OpenAI-compatible
    server; `model` names the served model)."""
    from agents.llm import build_backend

    kind, sep, target = spec.partition(":")
    if not sep or not target:
        raise EmbedkitError(f"--llm must be hf:PATH or openai:URL, got '{spec}'")
    if kind in ("hf", "transformers"):
        return build_backend({"kind": "transformers", "model": target, "batch_size": batch_size})
    if kind == "openai":
        if not model:
            raise EmbedkitError("an openai: judge needs the served model's name (--llm-model NAME)")
        return build_backend({"kind": "openai", "base_url": target, "model": model, "timeout": timeout})
    raise EmbedkitError(f"--llm must start with hf: or openai:, got '{kind}:'")
