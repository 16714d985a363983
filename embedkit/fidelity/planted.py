"""Handmade probe texts with planted facts: entities, numbers, and who-did-what-to-whom roles.

Several facts go against common priors ("the white strawberry", "the green sun") so a decoder that
rewrites them from its beliefs is caught; role sentences catch "Alice hit Bob" -> "Bob hit Alice".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from embedkit.errors import DataFormatError


class Roles(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str
    action: str
    patient: str


class ProbeText(BaseModel):
    """A text and the facts it plants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    entities: list[str] = []
    numbers: list[str] = []
    roles: Roles | None = None


def _probe(text: str, entities=(), numbers=(), roles: tuple[str, str, str] | None = None) -> ProbeText:
    return ProbeText(text=text, entities=list(entities), numbers=list(numbers),
                     roles=Roles(agent=roles[0], action=roles[1], patient=roles[2]) if roles else None)


PLANTED_TEXTS: list[ProbeText] = [
    _probe("Alice hit Bob .", ["Alice", "Bob"], roles=("Alice", "hit", "Bob")),
    _probe("Bob hit Alice .", ["Alice", "Bob"], roles=("Bob", "hit", "Alice")),
    _probe("Carol paid Dave 42 dollars in 2019 .", ["Carol", "Dave"], ["42", "2019"], ("Carol", "paid", "Dave")),
    _probe("Dave paid Carol 17 euros .", ["Carol", "Dave"], ["17"], ("Dave", "paid", "Carol")),
    _probe("the white strawberry is small .", ["white strawberry"]),
    _probe("the green sun rose at 7 .", ["green sun"], ["7"]),
    _probe("Paris is the capital of Germany .", ["Paris", "Germany"]),
    _probe("Berlin is in France .", ["Berlin", "France"]),
    _probe("Erin chased Frank near the door .", ["Erin", "Frank"], roles=("Erin", "chased", "Frank")),
    _probe("the cat sat on 3 mats in 1999 .", ["cat"], ["3", "1999"]),
    _probe("Grace taught Heidi 5 songs .", ["Grace", "Heidi"], ["5"], ("Grace", "taught", "Heidi")),
    _probe("the blue banana weighs 250 grams .", ["blue banana"], ["250"]),
]

_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_NAME = re.compile(r"\b[A-Z][a-z]+\b")


def read_probe_texts(path: str | Path) -> list[ProbeText]:
    """jsonl of ProbeText objects, or a plain text file (one text per line; numbers and capitalised
    words after the first are taken as the facts to preserve)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataFormatError(f"cannot read: {error}", path=path) from error
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                texts.append(ProbeText.model_validate(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as error:
                raise DataFormatError(f"not a probe text: {error}", path=path, line=number) from error
        else:
            body = line.strip()
            names = [m for m in _NAME.findall(body) if not body.startswith(m)]
            texts.append(ProbeText(text=body, entities=list(dict.fromkeys(names)),
                                   numbers=list(dict.fromkeys(_NUMBER.findall(body)))))
    if not texts:
        raise DataFormatError("no texts", path=path)
    return texts
