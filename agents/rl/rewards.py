"""Verifiable rewards (registry `REWARDS`): `exact_match`, `f1`, `math_boxed`, `countdown`, `format`.

A reward sees a whole `RewardBatch` (so group-level rewards such as ACPO fit the same slot) and returns one
float per response. Rule rewards score each response on its own against `ground_truths`.

    reward = build_reward("exact_match")
    reward(RewardBatch(prompts=["q"], responses=["<answer> Paris </answer>"], ground_truths=[["paris"]]))
"""

from __future__ import annotations

import ast
import operator
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn, build_reward

__all__ = ["REWARDS", "RewardBatch", "RewardFn", "build_reward", "extract_answer", "normalize_answer"]

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def load_reward_plugins() -> None:
    """Kept for old callers: the reward models are lazy entries of `REWARDS`, nothing needs loading."""


def extract_answer(text: str) -> str | None:
    """The content of the last `<answer>…</answer>` block, or None."""
    found = ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(ground_truth: Any) -> list[str]:
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("target", ground_truth.get("answers", ground_truth.get("answer")))
    if isinstance(ground_truth, str | int | float):
        return [str(ground_truth)]
    return [str(g) for g in ground_truth]


def exact_match_score(prediction: str | None, golds: Sequence[str]) -> float:
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str | None, golds: Sequence[str]) -> float:
    """Token-level F1 (max over golds); yes/no/noanswer must match exactly, as in HotpotQA's script."""
    if prediction is None:
        return 0.0
    best = 0.0
    pred = normalize_answer(prediction)
    for gold in golds:
        g = normalize_answer(gold)
        if (pred in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and pred != g:
            continue
        common = Counter(pred.split()) & Counter(g.split())
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred.split()), same / len(g.split())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _per_sample(score: Callable[[str, Any], float]) -> RewardFn:
    def reward(batch: RewardBatch) -> list[float]:
        return [score(r, g) for r, g in zip(batch.responses, batch.ground_truths, strict=True)]

    return reward


def _answer_reward(metric: Callable[[str, Sequence[str]], float], format_penalty: float) -> RewardFn:
    """`metric` of the last `<answer>` against the golds; `format_penalty` for a response without one."""

    def score(response: str, gt: Any) -> float:
        pred = extract_answer(response)
        return format_penalty if pred is None else metric(pred, _golds(gt))

    return _per_sample(score)


@REWARDS.register("exact_match")
def exact_match(format_penalty: float = 0.0) -> RewardFn:
    """1 when the last `<answer>` matches a gold answer after normalisation; `format_penalty` without one."""
    return _answer_reward(exact_match_score, format_penalty)


@REWARDS.register("f1")
def f1(format_penalty: float = 0.0) -> RewardFn:
    """Token F1 of the last `<answer>` against the best gold; `format_penalty` without one."""
    return _answer_reward(f1_score, format_penalty)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} (nested braces allowed), or None."""
    start = text.rfind("\\boxed")
    if start == -1:
        return None
    i = text.find("{", start)
    if i == -1:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _normalize_math(text: str) -> str:
    text = text.strip().strip("$").replace("\\left", "").replace("\\right", "").replace("\\!", "")
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    text = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = text.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    text = re.sub(r"\s+", "", text).rstrip(".")
    return text


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        pass
    try:
        value = _safe_eval(text)
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError, RecursionError):
        return None
    return value


def math_equal(prediction: str, gold: str) -> bool:
    """String equality after LaTeX normalisation, else exact rational equality of both as numbers."""
    a, b = _normalize_math(prediction), _normalize_math(gold)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and x == y


@REWARDS.register("closeness")
def closeness(scale: float = 5.0, modulo: int | None = 10, format_penalty: float = 0.0) -> RewardFn:
    """Dense numeric reward max(0, 1 − distance / scale) for the last `<answer>` (1 only when exact);
    `modulo` measures the distance around a circle (digits mod 10). Toy tasks learn fast with it."""

    def score(response: str, gt: Any) -> float:
        pred = extract_answer(response)
        try:
            value, gold = float(pred), float(_golds(gt)[0])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return format_penalty
        distance = abs(value - gold)
        if modulo:
            distance = min(distance % modulo, modulo - distance % modulo)
        return max(0.0, 1.0 - distance / scale)

    return _per_sample(score)


@REWARDS.register("math_boxed")
def math_boxed(format_penalty: float = 0.0) -> RewardFn:
    """1 when the last \\boxed{} answer equals the gold answer (symbolic normalisation, exact fractions)."""

    def score(response: str, gt: Any) -> float:
        pred = last_boxed(response)
        if pred is None:
            return format_penalty
        return float(any(math_equal(pred, g) for g in _golds(gt)))

    return _per_sample(score)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _safe_eval(expression: str) -> Fraction:
    """Evaluate + − × ÷ and parentheses over integers exactly; anything else raises ValueError."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return Fraction(node.value)
        raise ValueError(f"not allowed in an equation: {ast.dump(node)[:40]}")

    if len(expression) > 200:
        raise ValueError("equation too long")
    return walk(ast.parse(expression, mode="eval"))


def countdown_score(response: str, target: int, numbers: Sequence[int], *, format_score: float = 0.1) -> float:
    """1 for an equation in the last `<answer>` that uses each given number exactly once and equals
    `target`; `format_score` for a well-formed but wrong equation; 0 otherwise."""
    equation = extract_answer(response)
    if equation is None:
        return 0.0
    equation = equation.split("=")[0].strip()
    if not re.fullmatch(r"[\d+\-*/().\s]+", equation):
        return 0.0
    used = sorted(int(n) for n in re.findall(r"\d+", equation))
    if used != sorted(int(n) for n in numbers):
        return format_score
    try:
        value = _safe_eval(equation)
    except (ValueError, SyntaxError, ZeroDivisionError):
        return format_score
    return 1.0 if value == Fraction(target) else format_score


@REWARDS.register("countdown")
def countdown(format_score: float = 0.1) -> RewardFn:
    """Ground truth: {"target": int, "numbers": [int, ...]}."""

    def score(response: str, gt: Any) -> float:
        return countdown_score(response, int(gt["target"]), gt["numbers"], format_score=format_score)

    return _per_sample(score)


@REWARDS.register("format")
def answer_format(pattern: str = r"<answer>.*?</answer>\s*$") -> RewardFn:
    """1 when the response matches `pattern` (default: ends with an answer block)."""
    compiled = re.compile(pattern, re.DOTALL)
    return _per_sample(lambda response, gt: float(bool(compiled.search(response))))
