"""Fidelity metrics for compress-then-reconstruct models: BLEU, exact-token recovery, fact preservation,
role swaps, effective rank and decoding entropy. Pure functions over tokens, strings and arrays."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+(?:[.,]\d+)*|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (numbers such as 3.5 or 1,000 stay whole)."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]], max_n: int = 4,
                smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al.) in [0, 1] with one reference per hypothesis; `smooth` adds one to
    the n-gram counts of orders above 1 (Lin & Och), so short texts do not score zero for one missing n-gram."""
    if len(references) != len(hypotheses):
        raise ValueError("one reference per hypothesis")
    matches = [0] * max_n
    totals = [0] * max_n
    ref_length = hyp_length = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref_length += len(reference)
        hyp_length += len(hypothesis)
        for n in range(1, max_n + 1):
            hyp = _ngrams(hypothesis, n)
            ref = _ngrams(reference, n)
            matches[n - 1] += sum(min(count, ref[gram]) for gram, count in hyp.items())
            totals[n - 1] += max(len(hypothesis) - n + 1, 0)
    if hyp_length == 0:
        return 0.0
    log_precision = 0.0
    for n in range(max_n):
        add = 1 if (smooth and n > 0) else 0
        if matches[n] + add == 0 or totals[n] + add == 0:
            return 0.0
        log_precision += math.log((matches[n] + add) / (totals[n] + add)) / max_n
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)


def exact_token_recovery(reference: Sequence[int], hypothesis: Sequence[int]) -> float:
    """Share of reference positions whose token is reproduced at the same position."""
    if not reference:
        return 1.0
    return sum(1 for i, token in enumerate(reference) if i < len(hypothesis) and hypothesis[i] == token) / len(reference)


def preserved(facts: Sequence[str], reconstruction: str) -> list[bool]:
    """For each fact string (entity, number, phrase): does it appear, as whole words, in the reconstruction?"""
    hyp = " " + " ".join(words(reconstruction)) + " "
    return [(" " + " ".join(words(fact)) + " ") in hyp for fact in facts]


def role_outcome(agent: str, action: str, patient: str, reconstruction: str) -> str:
    """'preserved' (agent ... action ... patient), 'swapped' (patient ... action ... agent) or 'lost'."""
    tokens = words(reconstruction)

    def position(phrase: str) -> int | None:
        target = words(phrase)
        for i in range(len(tokens) - len(target) + 1):
            if tokens[i:i + len(target)] == target:
                return i
        return None

    a, v, p = position(agent), position(action), position(patient)
    if a is not None and v is not None and p is not None:
        if a < v < p:
            return "preserved"
        if p < v < a:
            return "swapped"
    return "lost"


def swap_roles(text: str, agent: str, patient: str) -> str:
    """The text with agent and patient exchanged ("Alice hit Bob" -> "Bob hit Alice")."""
    marker = "\u0000"
    swapped = re.sub(rf"\b{re.escape(agent)}\b", marker, text)
    swapped = re.sub(rf"\b{re.escape(patient)}\b", agent, swapped)
    return swapped.replace(marker, patient)


def effective_rank(matrix: np.ndarray, *, center: bool = False) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalised singular values (1..min(n, d))."""
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) == 0:
        raise ValueError("effective rank needs a non-empty 2-D matrix")
    if center:
        data = data - data.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(data, compute_uv=False)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def entropy(probabilities: np.ndarray) -> float:
    """Shannon entropy (nats) of one distribution."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
