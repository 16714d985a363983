"""Agentic-R: label passage utility along agent trajectories, train the retriever on it, iterate with the agent.

    from agents.agentic_r import IterateConfig, iterate
    iterate(IterateConfig.from_yaml("configs/agentic_r.yaml"))

Pieces: `utility` (local / global scorers), `pairs` (the training-pair rule), `label` (scoring along
trajectories), `train` (sentence-transformers InfoNCE training and re-indexing), `iterate` (K rounds).
"""

from agents.agentic_r.config import (
    AGENTIC_R_QUERY,
    AgentUpdateConfig,
    IterateConfig,
    LabelConfig,
    RetrieverTrainConfig,
)
from agents.agentic_r.iterate import iterate, question_bound_engine
from agents.agentic_r.label import collect_steps, label, rerun_policy
from agents.agentic_r.pairs import PairPassage, TrainingPair, build_pairs, read_pairs, write_pairs
from agents.agentic_r.train import make_loss, pair_rows, reindex, train_retriever
from agents.agentic_r.utility import (
    GLOBAL_SCORERS,
    LOCAL_SCORERS,
    Step,
    contains_answer,
    parse_listwise_scores,
    parse_sub_answers,
)

__all__ = [
    "AGENTIC_R_QUERY",
    "GLOBAL_SCORERS",
    "LOCAL_SCORERS",
    "AgentUpdateConfig",
    "IterateConfig",
    "LabelConfig",
    "PairPassage",
    "RetrieverTrainConfig",
    "Step",
    "TrainingPair",
    "build_pairs",
    "collect_steps",
    "contains_answer",
    "iterate",
    "label",
    "make_loss",
    "pair_rows",
    "parse_listwise_scores",
    "parse_sub_answers",
    "question_bound_engine",
    "read_pairs",
    "reindex",
    "rerun_policy",
    "train_retriever",
    "write_pairs",
]
