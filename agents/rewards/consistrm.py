"""ConsistRM: self-training a generative reward model without labels, from its own consistency.

The judge compares two responses (pairwise: a critique, then `<verdict>A</verdict>` or `<verdict>B</verdict>`,
as the benchmarks require) or judges one (pointwise: `<verdict>yes|no</verdict>`). For one item it samples K
judgements, each a vote v ∈ {+1, −1}. Pairwise votes are taken in the item's canonical order (+1: the pair's
first response is better), so the two presentation orders of a pair vote on the same item. Per round t:

    ŷ_t = sign(mean(votes of round t so far) + mean(ŷ_1 … ŷ_{t−1}))        (0 on a tie: no supervision)

Rewards per judgement: answer reward 1 when its vote equals ŷ (0 otherwise); +0.1 when its critique is among
the top-p fraction of most semantically consistent critiques (mean cosine to the item's other critiques,
embedded with any embedkit encoder) and carries ŷ; −5 for a format violation (no A/B or yes/no verdict).
On a tie the well-formed judgements get no reward (None → `tie_reward`, 0 by default).

Rounds are clean passes over the data when the `judge_prompts` task stamps each prompt's pass number into its
ground truth (`{"item": id, "swapped": bool, "round": r}`); without a round, every visit of an item is a
round. All groups of one item in a batch (the task serves both orders of a pair next to each other) pool
their votes before the item is labelled, so a position-biased judge's votes cancel instead of labelling. The per-item memory is part of the training state (`state_dict` / `load_state_dict`): the RL trainer
saves it in every checkpoint and restores it on resume (`agents.rewards.training.GRMTrainer` adds the
position in the pass).

Seeding the memory (`seed_scores: FILE`, as the official trainer does): its `fit()` stores each query's
precomputed `median_score_list` (scores of earlier rollouts, a column of its training parquet) as the query's
history the first time the query is drawn, and every later label is computed against that history. Here the file
is jsonl, one line per item: `{"item": "<id>", "median_score_list": [1, -1, 0.5]}` — the item is the pair id
of the `judge_prompts` ground truth (`{"item": …}`; a pointwise item is its prompt), and each score is a vote
on ConsistRM's scale in [−1, 1] (+1: the pair's first response is better, or "yes" pointwise; e.g. the mean
vote of K judgements sampled before RL). An item's scores join its history the first time it is labelled;
items without a line start empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.rewards.parsing import critique_of, parse_pairwise, parse_vote
from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn
from embedkit.errors import DataFormatError

Embed = Callable[[list[str]], np.ndarray]
Mode = Literal["auto", "pairwise", "pointwise"]

PAIRWISE_PROMPT = """You are a careful judge. Compare the two responses to the query. First write a short \
critique inside <critique>…</critique>, then give the better response as <verdict>A</verdict> or \
<verdict>B</verdict>.

Query: {query}

Response A: {a}

Response B: {b}
"""


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pairwise_vote(text: str) -> int | None:
    """+1 for A, −1 for B; None for a tie or an unreadable verdict (a format violation in training)."""
    verdict = parse_pairwise(text)
    return 1 if verdict == "A" else -1 if verdict == "B" else None


def _oriented(flip: int) -> Callable[[str], int | None]:
    """Pairwise votes in the item's canonical order (`flip` = −1 when the pair is shown swapped)."""

    def vote(text: str) -> int | None:
        v = pairwise_vote(text)
        return None if v is None else v * flip

    return vote


@dataclass
class ItemMemory:
    labels: list[float] = field(default_factory=list)  # seeded scores, then ŷ of every finished round
    round: int | None = None  # the round now open (explicit rounds only)
    votes: list[int] = field(default_factory=list)  # votes of the open round


class ConsistencyMemory:
    """Each item's pseudo-labels over rounds (the temporal-consistency rule)."""

    def __init__(self, seed: Mapping[str, Sequence[float]] | None = None) -> None:
        self.items: dict[Hashable, ItemMemory] = {}
        self.seed = {str(k): list(v) for k, v in (seed or {}).items()}

    def update(self, item: Hashable, votes: Sequence[int], round: int | None = None) -> int:
        """ŷ for `item` now. Without `round` every call is a round of its own; with it, calls of one round
        pool their votes and the round's ŷ joins the history when the next round opens. An item seen for the
        first time starts from its seeded scores (none unless seeded)."""
        mem = self.items.get(item)
        if mem is None:
            mem = self.items[item] = ItemMemory(labels=list(self.seed.get(str(item), [])))
        if round is None:
            label = self._label(list(votes), mem.labels)
            mem.labels.append(label)
            return label
        if mem.round != round:
            if mem.round is not None:
                mem.labels.append(self._label(mem.votes, mem.labels))
            mem.round, mem.votes = round, []
        mem.votes += list(votes)
        return self._label(mem.votes, mem.labels)

    @staticmethod
    def _label(votes: Sequence[int], earlier: Sequence[float]) -> int:
        current = sum(votes) / len(votes) if votes else 0.0
        prior = sum(earlier) / len(earlier) if earlier else 0.0
        return sign(current + prior)

    def state_dict(self) -> dict[str, Any]:
        return {"items": {str(k): {"labels": m.labels, "round": m.round, "votes": m.votes} for k, m in self.items.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = {k: ItemMemory(list(v["labels"]), v.get("round"), list(v.get("votes", [])))
                      for k, v in state.get("items", {}).items()}  # fmt: skip


class PseudoLabeler(ConsistencyMemory):
    """Every call is a round: `history[item]` lists the item's pseudo-labels so far."""

    @property
    def history(self) -> dict[Hashable, list[float]]:
        return {k: m.labels for k, m in self.items.items()}


def load_seed_scores(path: str | Path) -> dict[str, list[float]]:
    """Per-item prior scores from jsonl (`{"item": id, "median_score_list": [scores in [-1, 1]]}`)."""
    from embedkit.data import iter_json_lines

    path = Path(path)
    if not path.is_file():
        raise DataFormatError("ConsistRM seed-score file not found", path=path)
    seeds: dict[str, list[float]] = {}
    for line, record in iter_json_lines(path):
        if "item" not in record:
            raise DataFormatError("missing field", path=path, line=line, field="item", fields_found=record)
        scores = record.get("median_score_list")
        if not isinstance(scores, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and -1.0 <= x <= 1.0 for x in scores
        ):
            raise DataFormatError("'median_score_list' must be a list of numbers in [-1, 1] (ConsistRM votes: +1 "
                                  "the first response / yes, -1 the second / no)", path=path, line=line,
                                  field="median_score_list")  # fmt: skip
        item = str(record["item"])
        if item in seeds:
            raise DataFormatError(f"item '{item}' is seeded twice", path=path, line=line, field="item")
        seeds[item] = [float(x) for x in scores]
    if not seeds:
        raise DataFormatError("no seed scores", path=path)
    return seeds


def consistency_scores(embeddings: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of each row to every other row."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    sims = x @ x.T
    n = len(x)
    if n < 2:
        return np.zeros(n)
    return (sims.sum(1) - np.diag(sims)) / (n - 1)


def consistrm_item_rewards(texts: Sequence[str], label: int, embed: Embed | None, *, top_p: float = 0.5,
                           bonus: float = 0.1, format_penalty: float = -5.0,
                           vote: Callable[[str], int | None] = parse_vote) -> list[float | None]:  # fmt: skip
    """Rewards of one item's K judgements given this round's pseudo-label ŷ (votes in ŷ's orientation)."""
    votes = [vote(t) for t in texts]
    rewards: list[float | None] = [format_penalty if v is None else None for v in votes]
    if label == 0:
        return rewards
    valid = [i for i, v in enumerate(votes) if v is not None]
    for i in valid:
        rewards[i] = 1.0 if votes[i] == label else 0.0
    if embed is not None and len(valid) >= 2:
        scores = consistency_scores(embed([critique_of(texts[i]) for i in valid]))
        keep = max(1, math.ceil(top_p * len(valid)))
        for rank in np.argsort(-scores, kind="stable")[:keep]:
            i = valid[int(rank)]
            if votes[i] == label:
                rewards[i] = (rewards[i] or 0.0) + bonus
    return rewards


def encoder_embed(model: str = "sentence-transformers/all-MiniLM-L6-v2", batch_size: int = 32) -> Embed:
    """Critique embeddings from an embedkit `Encoder` (query side: critiques are compared with each other)."""
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=model, batch_size=batch_size))
    return lambda texts: encoder.encode_queries(list(texts))


class ConsistRMReward:
    """A `RewardFn` over judge rollouts: one group = the K judgements of one prompt.

    Ground truth per prompt: None / a string (pointwise, the prompt is the item), or a dict
    `{"item": id, "swapped": bool, "round": r}` (pairwise; `swapped` when the pair is shown in reverse).
    Labels in the ground truth (`preferred`) are never read: training is self-supervised.
    """

    def __init__(self, embed: Embed | None, *, top_p: float = 0.5, bonus: float = 0.1,
                 format_penalty: float = -5.0, tie_reward: float = 0.0, mode: Mode = "auto",
                 seed_scores: Mapping[str, Sequence[float]] | None = None) -> None:  # fmt: skip
        if mode not in ("auto", "pairwise", "pointwise"):
            raise ValueError(f"mode must be auto, pairwise or pointwise, not '{mode}'")
        self.embed = embed
        self.top_p, self.bonus, self.format_penalty, self.tie_reward = top_p, bonus, format_penalty, tie_reward
        self.mode = mode
        self.memory = PseudoLabeler(seed_scores)
        self.last_labels: dict[Hashable, int] = {}

    @property
    def labeler(self) -> PseudoLabeler:
        return self.memory

    def _pairwise(self, gt: Any) -> bool:
        if self.mode != "auto":
            return self.mode == "pairwise"
        return isinstance(gt, dict) and "item" in gt

    def __call__(self, batch: RewardBatch) -> list[float]:
        groups = batch.group_ids or list(range(len(batch.responses)))
        out: list[float] = [0.0] * len(batch.responses)
        plans = []
        for gid in dict.fromkeys(groups):
            rows = [i for i, g in enumerate(groups) if g == gid]
            gt = batch.ground_truths[rows[0]] if batch.ground_truths else None
            info = gt if isinstance(gt, dict) else {}
            vote: Callable[[str], int | None] = parse_vote
            if self._pairwise(gt):
                vote = _oriented(-1 if info.get("swapped") else 1)
            item = info.get("item", batch.prompts[rows[0]])  # the prompt identifies a pointwise item
            plans.append((rows, item, info.get("round"), vote))
        # Every group of one item in this batch (e.g. both orders of a pair) votes before the item is labelled.
        pooled: dict[tuple[Hashable, int | None], list[int]] = {}
        for rows, item, round_, vote in plans:
            votes = [v for v in (vote(batch.responses[i]) for i in rows) if v is not None]
            pooled.setdefault((item, round_), []).extend(votes)
        labels = {key: self.memory.update(key[0], votes, key[1]) for key, votes in pooled.items()}
        for rows, item, round_, vote in plans:
            label = labels[(item, round_)]
            self.last_labels[item] = label
            rewards = consistrm_item_rewards([batch.responses[i] for i in rows], label, self.embed, top_p=self.top_p,
                                             bonus=self.bonus, format_penalty=self.format_penalty, vote=vote)  # fmt: skip
            for i, r in zip(rows, rewards, strict=True):
                out[i] = self.tie_reward if r is None else r
        return out

    # -- training state (saved with checkpoints) -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "last_labels": {str(k): v for k, v in self.last_labels.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state.get("memory", {}))
        self.last_labels = dict(state.get("last_labels", {}))


@REWARDS.register("consistrm")
def consistrm(model: str | None = "sentence-transformers/all-MiniLM-L6-v2", top_p: float = 0.5, bonus: float = 0.1,
              format_penalty: float = -5.0, tie_reward: float = 0.0, mode: Mode = "auto",
              seed_scores: str | None = None) -> RewardFn:  # fmt: skip
    """`model`: the embedkit encoder for critique consistency (null: no consistency bonus); `seed_scores`: a
    jsonl of per-item prior scores that start each item's memory (the official `median_score_list`)."""
    seeds = load_seed_scores(seed_scores) if seed_scores else None
    return ConsistRMReward(encoder_embed(model) if model else None, top_p=top_p, bonus=bonus,
                           format_penalty=format_penalty, tie_reward=tie_reward, mode=mode,
                           seed_scores=seeds)  # fmt: skip


def render_pairwise(query: str, a: str, b: str) -> str:
    return PAIRWISE_PROMPT.format(query=query, a=a, b=b)


def consistrm_judge(backend: Any, **options: Any) -> Any:
    """The ConsistRM pairwise judge for evaluation (critique, then verdict; greedy by default)."""
    from agents.rewards.judges import PromptJudge

    return PromptJudge(backend, PAIRWISE_PROMPT, **options)
