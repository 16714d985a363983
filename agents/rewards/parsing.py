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
