"""Agentic-R training pairs: from scored candidates to (query, positives, hard negatives).

Rule (per search step, as the official step4 does it): sort candidates by (global EM, local score), best
first. Skip the step when the best has EM = 0 or local < `min_local`. Every candidate tied with the best on
both keys is a positive candidate and never a negative; the first `max_positives` of them (in retrieval order)
are kept. Negatives: `negatives` drawn at random (seeded per step) from the candidates not tied with the
best, kept in utility order; a step with fewer such candidates is skipped.

    pairs = build_pairs(steps, LabelConfig())
    write_pairs("pairs.jsonl", pairs); pairs = read_pairs("pairs.jsonl")
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agents.agentic_r.config import LabelConfig
from agents.agentic_r.utility import Step
from embedkit.data.records import read_records, write_records
from embedkit.passage import Passage


class PairPassage(BaseModel):
    """A candidate passage with its two utilities (the `embedkit.passage.Passage` fields a pair file keeps)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = ""
    text: str = ""
    local: float = 0.0
    em: float = 0.0

    def joined(self) -> str:
        """Title and text as the index encodes them (`Document.joined`)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text

    def passage(self) -> Passage:
        return Passage(id=self.id, title=self.title, text=self.text, score=self.local)


class TrainingPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    qid: str
    turn: int
    query: str  # the retriever input, "{question} [SEP] {query}"
    positives: list[PairPassage]
    negatives: list[PairPassage]
    # Which scorers produced the utilities (None: a file written before they were recorded).
    local_utility: Literal["llm_judge", "embedder"] | None = None
    global_utility: Literal["rerun", "containment"] | None = None


def build_pairs(steps: Sequence[Step], config: LabelConfig) -> tuple[list[TrainingPair], dict[str, int]]:
    """Training pairs and counts of why steps were kept or skipped."""
    pairs: list[TrainingPair] = []
    stats = {"steps": len(steps), "kept": 0, "skipped_unjudged": 0, "skipped_em0": 0, "skipped_local": 0,
             "skipped_negatives": 0}  # fmt: skip
    for step in steps:
        if step.local is None or not step.candidates:
            stats["skipped_unjudged"] += 1  # the judge's reply could not be read (upstream drops the step)
            continue
        scored = [
            PairPassage(id=p.id, title=p.title, text=p.text, local=loc, em=em)
            for p, loc, em in zip(step.candidates, step.local, step.global_, strict=True)
        ]
        ranked = sorted(scored, key=lambda c: (c.em, c.local), reverse=True)  # stable: retrieval order on ties
        best = ranked[0]
        if best.em <= 0:
            stats["skipped_em0"] += 1
            continue
        if best.local < config.min_local:
            stats["skipped_local"] += 1
            continue
        tied = [c for c in ranked if (c.em, c.local) == (best.em, best.local)]
        rest = [c for c in ranked if (c.em, c.local) != (best.em, best.local)]
        if len(rest) < config.negatives:
            stats["skipped_negatives"] += 1
            continue
        # Seed per step so adding questions does not change the negatives of the others.
        digest = hashlib.sha256(f"{config.seed}|{step.trajectory.id}|{step.turn}".encode()).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        chosen = sorted(rng.sample(range(len(rest)), config.negatives))  # utility order, hardest first
        pairs.append(TrainingPair(qid=step.trajectory.id, turn=step.turn, query=step.retriever_query,
                                  positives=tied[: config.max_positives],
                                  negatives=[rest[i] for i in chosen], local_utility=config.local,
                                  global_utility=config.global_utility))  # fmt: skip
        stats["kept"] += 1
    return pairs, stats


def write_pairs(path: str | Path, pairs: Iterable[TrainingPair]) -> Path:
    return write_records(path, pairs)


def read_pairs(path: str | Path) -> list[TrainingPair]:
    return read_records(path, TrainingPair, what="training pair", allow_empty=False)
