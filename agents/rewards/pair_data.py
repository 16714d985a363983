"""Labelled preference pairs with known winners, built from the shared QA data and the RL module's checkers.

No preference benchmark ships offline, so these pairs stand in for one (the winner is known by construction):

- `hotpotqa`, `nq`, `bamboogle`: a question with its gold answer (chosen) against the gold answer of another
  question (rejected), both rendered in the same sentence so only the content differs;
- `countdown`: an equation that uses the given numbers and reaches the target against one that uses the same
  numbers and misses it (both checked with `agents.rl.rewards.countdown_score`);
- `math`: a worked arithmetic solution with the right `\\boxed{}` answer against the same steps with one
  arithmetic slip (checked with `agents.rl.rewards.math_equal`).

    pairs = build_pairs(["hotpotqa", "countdown"], per_source=50, seed=0)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from agents.rewards.pairs import PreferencePair
from embedkit.errors import EmbedkitError

QA_FILES = {
    "hotpotqa": "hotpotqa_dev500/dev_subsampled.jsonl",
    "nq": "qa_questions/nq_open_test.jsonl",
    "bamboogle": "qa_questions/bamboogle_test.jsonl",
}
QA_TEMPLATE = "The answer is {answer}."


def _shared_dir(shared_dir: str | Path | None) -> Path:
    from embedkit.paths import shared_data_dir

    folder = Path(shared_dir) if shared_dir else shared_data_dir()
    if folder is None or not folder.is_dir():
        raise EmbedkitError("the shared QA data is not available: pass --shared-dir (../shared/data)")
    return folder


def qa_pairs(source: str, n: int, seed: int = 0, shared_dir: str | Path | None = None) -> list[PreferencePair]:
    """`n` pairs (question, its gold answer, another question's gold answer) from one shared QA file."""
    from agents.rl.rewards import normalize_answer
    from agents.search_agent.questions import load_questions

    if source not in QA_FILES:
        raise EmbedkitError(f"unknown QA source '{source}'; choose one of: {', '.join(QA_FILES)}")
    questions = [q for q in load_questions(_shared_dir(shared_dir) / QA_FILES[source]) if q.answers]
    rng = random.Random(f"{source}-{seed}")
    order = list(range(len(questions)))
    rng.shuffle(order)
    pairs = []
    for i in order:
        q = questions[i]
        golds = {normalize_answer(a) for a in q.answers}
        for _ in range(20):  # a wrong answer: another question's gold that is none of this one's
            other = questions[rng.randrange(len(questions))]
            wrong = other.answers[0]
            if other.id != q.id and normalize_answer(wrong) not in golds and normalize_answer(wrong):
                break
        else:
            continue
        pairs.append(PreferencePair(f"{source}-{q.id}", q.question, QA_TEMPLATE.format(answer=q.answers[0]),
                                    QA_TEMPLATE.format(answer=wrong), source))  # fmt: skip
        if len(pairs) >= n:
            break
    return pairs


COUNTDOWN_PROMPT = ("Using the numbers {numbers}, create an equation that equals {target}. Use each number "
                    "exactly once with + - * /. Give the equation inside <answer> </answer>.")  # fmt: skip
_OPS = ("+", "-", "*")


def _expressions(numbers: Sequence[int], rng: random.Random) -> Callable[[], str]:
    def make() -> str:
        nums = list(numbers)
        rng.shuffle(nums)
        text = str(nums[0])
        for k in nums[1:]:
            op = rng.choice(_OPS)
            text = f"({text} {op} {k})" if op != "*" else f"{text} * {k}"
        return text.strip()

    return make


def countdown_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Countdown problems with a verified correct equation (chosen) and a verified wrong one (rejected)."""
    from agents.rl.rewards import _safe_eval, countdown_score

    rng = random.Random(f"countdown-{seed}")
    pairs: list[PreferencePair] = []
    while len(pairs) < n:
        numbers = [rng.randint(1, 20) for _ in range(rng.choice((3, 4)))]
        make = _expressions(numbers, rng)
        good = make()
        value = _safe_eval(good)
        if value.denominator != 1 or value <= 0:
            continue
        target = int(value)
        for _ in range(50):
            bad = make()
            if _safe_eval(bad) != Fraction(target):
                break
        else:
            continue
        chosen, rejected = f"<answer>{good}</answer>", f"<answer>{bad}</answer>"
        assert countdown_score(chosen, target, numbers) == 1.0 and countdown_score(rejected, target, numbers) < 1.0
        prompt = COUNTDOWN_PROMPT.format(numbers=numbers, target=target)
        pairs.append(PreferencePair(f"countdown-{len(pairs)}", prompt, chosen, rejected, "countdown"))
    return pairs


def math_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Two-step arithmetic problems: a correct worked solution vs the same steps with one slip."""
    from agents.rl.rewards import last_boxed, math_equal

    rng = random.Random(f"math-{seed}")
    pairs: list[PreferencePair] = []
    for k in itertools.count():
        if len(pairs) >= n:
            break
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(1, 99)
        product, total = a * b, a * b + c
        slip = product + rng.choice((-10, -2, -1, 1, 2, 10))
        prompt = f"Compute {a} * {b} + {c}. Put the final answer in \\boxed{{}}."
        chosen = f"First {a} * {b} = {product}. Then {product} + {c} = {total}. The answer is \\boxed{{{total}}}."
        rejected = f"First {a} * {b} = {slip}. Then {slip} + {c} = {slip + c}. The answer is \\boxed{{{slip + c}}}."
        assert math_equal(last_boxed(chosen) or "", str(total)) and not math_equal(last_boxed(rejected) or "", str(total))
        pairs.append(PreferencePair(f"math-{k}", prompt, chosen, rejected, "math"))
    return pairs


SOURCES = ("hotpotqa", "nq", "bamboogle", "countdown", "math")


def build_pairs(sources: Sequence[str] = SOURCES, per_source: int = 50, seed: int = 0,
                shared_dir: str | Path | None = None) -> list[PreferencePair]:  # fmt: skip
    """Pairs from each source in turn (QA sources need the shared data)."""
    out: list[PreferencePair] = []
    for source in sources:
        if source in QA_FILES:
            out += qa_pairs(source, per_source, seed, shared_dir)
        elif source == "countdown":
            out += countdown_pairs(per_source, seed)
        elif source == "math":
            out += math_pairs(per_source, seed)
        else:
            raise EmbedkitError(f"unknown pair source '{source}'; choose from {', '.join(SOURCES)}")
    return out


def split_pairs(pairs: Sequence[PreferencePair], held_out: float, seed: int = 0) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) with the held-out fraction taken from every subset alike."""
    rng = random.Random(seed)
    train, test = [], []
    for subset in dict.fromkeys(p.subset for p in pairs):
        group = [p for p in pairs if p.subset == subset]
        rng.shuffle(group)
        cut = round(len(group) * held_out)
        test += group[:cut]
        train += group[cut:]
    return train, test
