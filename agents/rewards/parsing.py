"""Reading verdicts out of judge text."""

from __future__ import annotations

import re

VERDICT_RE = re.compile(r"<verdict>\s*(.*?)\s*</verdict>", re.DOTALL | re.IGNORECASE)
POSITIVE = {"yes", "correct", "true", "good", "1", "+1"}
NEGATIVE = {"no", "incorrect", "false", "bad", "0", "-1"}


def last_tag(text: str, tag: str) -> str | None:
    found = re.findall(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.DOTALL | re.IGNORECASE)
    return found[-1].strip() if found else None


def parse_vote(text: str) -> int | None:
    """+1 / −1 from the last `<verdict>` (yes/correct/… vs no/incorrect/…); None when missing or unclear."""
    verdict = last_tag(text, "verdict")
    if verdict is None:
        return None
    word = verdict.strip().strip(".").lower()
    if word in POSITIVE:
        return 1
    if word in NEGATIVE:
        return -1
    return None


def parse_choice(text: str, options: tuple[str, ...] = ("A", "B")) -> str | None:
    """The option named in the last `<verdict>` (case-insensitive), else None; `tie` is returned as is."""
    verdict = last_tag(text, "verdict")
    if verdict is None:
        return None
    word = verdict.strip().strip(".").upper()
    for option in options:
        if word == option.upper():
            return option
    return "tie" if word == "TIE" else None


def critique_of(text: str) -> str:
    """The judgement text before its verdict (what critique-consistency compares)."""
    match = VERDICT_RE.search(text)
    critique = text[: match.start()] if match else text
    critique = re.sub(r"</?critique>", "", critique, flags=re.IGNORECASE)
    return critique.strip()


# MT-Bench / RewardBench generative judges answer [[A]], [[B]] or [[C]] (a tie); ours write <verdict>…</verdict>.
BRACKET_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
TIE_WORDS = {"TIE", "EQUAL", "BOTH", "NEITHER", "C", "DRAW"}


def parse_pairwise(text: str) -> str | None:
    """"A", "B" or "tie" from a pairwise judgement; None when no verdict can be read.

    The last `<verdict>` wins; without one, the last MT-Bench style `[[A]]` / `[[B]]` / `[[C]]` (C is a tie).
    Anything else inside the tag (e.g. "A or B", "Response A") is unreadable rather than guessed.
    """
    verdict = last_tag(text, "verdict")
    if verdict is not None:
        word = verdict.strip().strip(".!").strip().upper()
        if word in ("A", "B"):
            return word
        return "tie" if word in TIE_WORDS else None
    found = BRACKET_RE.findall(text)
    if not found:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found[-1]]
