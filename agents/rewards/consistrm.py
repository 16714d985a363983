"""ConsistRM: self-training a generative reward model without labels, from its own consistency.

For one item (a query and a response to judge) the GenRM samples K judgements, each a critique ending in
`<verdict>yes|no</verdict>` (vote +1 / −1). Per round t:

    ŷ_t = sign(mean(votes of round t) + mean(ŷ_1 … ŷ_{t−1}))        (0 on a tie: no supervision)

Rewards per judgement: answer reward 1 when its vote equals ŷ (0 otherwise); +0.1 when its critique is among
the top-p fraction of most semantically consistent critiques (mean cosine to the item's other critiques,
embedded with an embedkit encoder) and carries ŷ; −5 for a format violation (no parsable verdict).
On a tie the well-formed judgements get no reward (None → left out of the loss; 0 in a plain float list).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from agents.rewards.parsing import critique_of, parse_vote
from agents.rl.reward_registry import REWARDS, RewardBatch, RewardFn

Embed = Callable[[list[str]], np.ndarray]


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


class PseudoLabeler:
    """Keeps each item's earlier pseudo-labels across rounds."""

    def __init__(self) -> None:
        self.history: dict[Hashable, list[int]] = {}

    def update(self, item: Hashable, votes: Sequence[int]) -> int:
        """ŷ for this round (votes are ±1; an empty round counts as mean 0); recorded for later rounds."""
        current = sum(votes) / len(votes) if votes else 0.0
        earlier = self.history.get(item, [])
        prior = sum(earlier) / len(earlier) if earlier else 0.0
        label = sign(current + prior)
        self.history.setdefault(item, []).append(label)
        return label


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
                           bonus: float = 0.1, format_penalty: float = -5.0) -> list[float | None]:  # fmt: skip
    """Rewards of one item's K judgements given this round's pseudo-label ŷ."""
    votes = [parse_vote(t) for t in texts]
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
                rewards[i] = rewards[i] + bonus
    return rewards


def encoder_embed(model: str = "sentence-transformers/all-MiniLM-L6-v2", batch_size: int = 32) -> Embed:
    """Critique embeddings from an embedkit `Encoder` (query side: critiques are compared with each other)."""
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=model, batch_size=batch_size))
    return lambda texts: encoder.encode_queries(list(texts))


class ConsistRMReward:
    """A `RewardFn` over judge rollouts: one group = the K judgements of one item (its prompt)."""

    def __init__(self, embed: Embed | None, *, top_p: float = 0.5, bonus: float = 0.1,
                 format_penalty: float = -5.0, tie_reward: float = 0.0) -> None:  # fmt: skip
        self.embed = embed
        self.top_p, self.bonus, self.format_penalty, self.tie_reward = top_p, bonus, format_penalty, tie_reward
        self.labeler = PseudoLabeler()
        self.last_labels: dict[Hashable, int] = {}

    def __call__(self, batch: RewardBatch) -> list[float]:
        groups = batch.group_ids or list(range(len(batch.responses)))
        out: list[float] = [0.0] * len(batch.responses)
        for gid in dict.fromkeys(groups):
            rows = [i for i, g in enumerate(groups) if g == gid]
            item = batch.prompts[rows[0]]  # the judge prompt identifies the item across rounds
            texts = [batch.responses[i] for i in rows]
            votes = [v for v in (parse_vote(t) for t in texts) if v is not None]
            label = self.labeler.update(item, votes)
            self.last_labels[item] = label
            rewards = consistrm_item_rewards(texts, label, self.embed, top_p=self.top_p, bonus=self.bonus,
                                             format_penalty=self.format_penalty)  # fmt: skip
            for i, r in zip(rows, rewards, strict=True):
                out[i] = self.tie_reward if r is None else r
        return out


@REWARDS.register("consistrm")
def consistrm(model: str = "sentence-transformers/all-MiniLM-L6-v2", top_p: float = 0.5, bonus: float = 0.1,
              format_penalty: float = -5.0) -> RewardFn:  # fmt: skip
    return ConsistRMReward(encoder_embed(model), top_p=top_p, bonus=bonus, format_penalty=format_penalty)
