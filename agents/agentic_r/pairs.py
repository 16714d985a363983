"""Agentic-R training pairs: from scored candidates to (query, positives, hard negatives).

Rule (per search step): sort candidates by (global EM, local score), best first. Skip the step when the best
has EM = 0 or local < `min_local`. Positives: up to `max_positives` candidates tied with the best on both
keys (in retrieval order). Negatives: `negatives` drawn at random (seeded) from the other candidates.

    pairs = build_pairs(steps, LabelConfig())
    write_pairs("pairs.jsonl", pairs); pairs = read_pairs("pairs.jsonl")
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agents.agentic_r.config import LabelConfig
from agents.agentic_r.utility import Step
from agents.retrieval import Passage
from embedkit.data.records import read_records, write_records


class PairPassage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = ""
    text: str = ""
    local: float = 0.0
    em: float = 0.0

    def joined(self) -> str:
        """Title and text as the index encodes them (`Document.joined`)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


class TrainingPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    qid: str
    turn: int
    query: str  # the retriever input, "{question} [SEP] {query}"
    positives: list[PairPassage]
    negatives: list[PairPassage]


def build_pairs(steps: Sequence[Step], config: LabelConfig) -> tuple[list[TrainingPair], dict[str, int]]:
    """Training pairs and counts of why steps were kept or skipped."""
    pairs: list[TrainingPair] = []
    stats = {"steps": len(steps), "kept": 0, "skipped_em0": 0, "skipped_local": 0}
    for step in steps:
        scored = [
            PairPassage(id=p.id, title=p.title, text=p.text, local=loc, em=em)
            for p, loc, em in zip(step.candidates, step.local, step.global_, strict=True)
        ]
        if not scored:
            continue
        ranked = sorted(scored, key=lambda c: (c.em, c.local), reverse=True)  # stable: retrieval order on ties
        best = ranked[0]
        if best.em <= 0:
            stats["skipped_em0"] += 1
            continue
        if best.local < config.min_local:
            stats["skipped_local"] += 1
            continue
        positives = [c for c in ranked if (c.em, c.local) == (best.em, best.local)][: config.max_positives]
        chosen = {c.id for c in positives}
        rest = [c for c in scored if c.id not in chosen]
        # Seed per step so adding questions does not change the negatives of the others.
        digest = hashlib.sha256(f"{config.seed}|{step.trajectory.id}|{step.turn}".encode()).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        negatives = rng.sample(rest, min(config.negatives, len(rest)))
        pairs.append(TrainingPair(qid=step.trajectory.id, turn=step.turn, query=step.retriever_query,
                                  positives=positives, negatives=negatives))  # fmt: skip
        stats["kept"] += 1
    return pairs, stats


def write_pairs(path: str | Path, pairs: Iterable[TrainingPair]) -> Path:
    return write_records(path, pairs)


def read_pairs(path: str | Path) -> list[TrainingPair]:
    return read_records(path, TrainingPair, what="training pair", allow_empty=False)


def as_passage(p: PairPassage) -> Passage:
    return Passage(id=p.id, title=p.title, text=p.text, score=p.local)
