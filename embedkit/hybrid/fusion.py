"""Rank fusion methods, in a registry: reciprocal rank fusion and normalized score interpolation.

Every method maps, for one query, a list of {doc id: score} (one per system, best = highest score) to a
fused {doc id: score}. `fuse_runs` applies it to whole runs, `fuse_hits` to live search results.

    >>> fuse_scores([{"a": 3.0, "b": 1.0}, {"b": 9.0, "c": 5.0}], FusionConfig(method="rrf"))
    {'b': 0.0325..., 'a': 0.0163..., 'c': 0.0161...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedkit.data.runs import Run, ranked
from embedkit.errors import EmbedkitError
from embedkit.passage import Passage
from embedkit.registry import Registry

Scores = Mapping[str, float]
FusionFn = Callable[[Sequence[Scores], "FusionConfig"], dict[str, float]]

FUSION_METHODS: Registry[FusionFn] = Registry("fusion method")


def register_fusion(name: str) -> Callable[[FusionFn], FusionFn]:
    """Decorator: make a fusion function selectable as `FusionConfig(method=name)` / `--fusion name`."""
    return FUSION_METHODS.register(name)


class FusionConfig(BaseModel):
    """How runs are fused.

    - `rrf`: score = Σ wᵢ / (rrf_k + rankᵢ) (Cormack et al. 2009; rrf_k=60 as in their paper and pyserini).
    - `interpolate`: score = Σ wᵢ · norm(scoreᵢ), each system's scores normalized per query (min-max or
      z-score); a document a system did not return gets that system's lowest normalized score (one unit below
      its scores when they are all equal, e.g. a single hit).

    Weights: `weights` (one per system), else `alpha` for the first system and 1 − alpha for the second
    (interpolation of two systems), else equal weights.
    """

    # NaN or infinite settings (`--weights nan 1`, `--rrf-k inf`) would make every fused score NaN or 0.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: str = "rrf"
    rrf_k: float = Field(60.0, ge=0)
    alpha: float | None = Field(None, ge=0, le=1)
    normalization: Literal["minmax", "zscore"] = "minmax"
    weights: tuple[float, ...] | None = None
    depth: int = Field(1000, ge=1, description="hits per system that enter fusion")

    @model_validator(mode="after")
    def _known_method(self) -> FusionConfig:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method '{self.method}' (choose {', '.join(FUSION_METHODS.names())})")
        return self

    def weights_for(self, systems: int) -> list[float]:
        if self.weights is not None:
            if len(self.weights) != systems:
                raise EmbedkitError(f"{len(self.weights)} fusion weights for {systems} systems")
            return list(self.weights)
        if self.alpha is not None:
            if systems != 2:
                raise EmbedkitError(f"alpha weighs two systems; got {systems} (give one weight per system)")
            return [self.alpha, 1.0 - self.alpha]
        return [0.5, 0.5] if systems == 2 and self.method == "interpolate" else [1.0] * systems


@register_fusion("rrf")
def reciprocal_rank_fusion(systems: Sequence[Scores], config: FusionConfig) -> dict[str, float]:
    fused: dict[str, float] = {}
    for weight, scores in zip(config.weights_for(len(systems)), systems, strict=True):
        for rank, (doc_id, _) in enumerate(ranked(scores)[: config.depth], start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (config.rrf_k + rank)
    return fused


def normalize(scores: Scores, how: str) -> dict[str, float]:
    """Per-query score normalization; constant scores map to 1.0 (min-max) or 0.0 (z-score).

    Scores must be finite. Both normalizations ignore the scale, so the scores are first divided by the
    largest magnitude: differences and squares of scores near 1e308 cannot overflow into inf or NaN, and those
    of tiny scores cannot vanish into a false "all equal".
    """
    if not scores:
        return {}
    if not all(math.isfinite(score) for score in scores.values()):
        raise EmbedkitError("cannot normalize NaN or infinite scores")
    scale = max(abs(score) for score in scores.values()) or 1.0
    values = [score / scale for score in scores.values()]
    scores = dict(zip(scores, values, strict=True))
    if how == "minmax":
        low, high = min(values), max(values)
        if high == low:
            return dict.fromkeys(scores, 1.0)
        return {doc: (score - low) / (high - low) for doc, score in scores.items()}
    if how == "zscore":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        if std == 0:
            return dict.fromkeys(scores, 0.0)
        return {doc: (score - mean) / std for doc, score in scores.items()}
    raise EmbedkitError(f"unknown normalization '{how}' (minmax or zscore)")


@register_fusion("interpolate")
def score_interpolation(systems: Sequence[Scores], config: FusionConfig) -> dict[str, float]:
    normalized = [normalize(dict(ranked(scores)[: config.depth]), config.normalization) for scores in systems]
    floors = [_missing_score(norm) for norm in normalized]
    docs = {doc for norm in normalized for doc in norm}
    weights = config.weights_for(len(systems))
    return {
        doc: sum(w * norm.get(doc, floor) for w, norm, floor in zip(weights, normalized, floors, strict=True))
        for doc in docs
    }


def _missing_score(normalized: Mapping[str, float]) -> float:
    """What a system gives a document it did not return: its lowest normalized score, or one unit below its
    scores when they are all equal (e.g. a single hit), which must not lift every unreturned document to its level."""
    if not normalized:
        return 0.0
    low, high = min(normalized.values()), max(normalized.values())
    return low if high > low else low - 1.0


def fuse_scores(systems: Sequence[Scores], config: FusionConfig | None = None) -> dict[str, float]:
    """Fuse one query's scores from several systems; the result is sorted best first."""
    config = config or FusionConfig()
    return dict(ranked(FUSION_METHODS.get(config.method)(systems, config)))


def fuse_runs(runs: Sequence[Run], config: FusionConfig | None = None, *, k: int | None = None) -> Run:
    """Fuse whole runs query by query (a query missing from a run counts as no hits there); keep top k."""
    if len(runs) < 2:
        raise EmbedkitError(f"fusion needs at least two runs, got {len(runs)}")
    config = config or FusionConfig()
    query_ids = list(dict.fromkeys(q for run in runs for q in run))
    fused: Run = {}
    for query_id in query_ids:
        scores = fuse_scores([run.get(query_id, {}) for run in runs], config)
        fused[query_id] = dict(list(scores.items())[:k]) if k is not None else scores
    return fused


def fuse_hits(systems: Sequence[Sequence[Passage]], config: FusionConfig, k: int) -> list[Passage]:
    """Fuse one query's live hits; titles and texts come from whichever system returned the document."""
    by_id: dict[str, Passage] = {}
    for hits in systems:
        for hit in hits:
            if hit.id not in by_id or (not by_id[hit.id].text and hit.text):
                by_id[hit.id] = hit
    fused = fuse_scores([{hit.id: hit.score for hit in hits} for hits in systems], config)
    return [
        Passage(id=doc_id, score=score, rank=rank, title=by_id[doc_id].title, text=by_id[doc_id].text)
        for rank, (doc_id, score) in enumerate(list(fused.items())[:k], start=1)
    ]
