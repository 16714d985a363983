"""Model merging for sentence-transformers embedders, on top of mergekit (method registry, safe output)."""

from embedkit.merging.merge import MergeResult, merge_from_yaml, merge_models, merge_with_config
from embedkit.merging.methods import (
    DEFAULT_MERGE_METHOD,
    MERGE_METHODS,
    MergeMethod,
    get_merge_method,
    register_merge_method,
)

__all__ = [
    "DEFAULT_MERGE_METHOD",
    "MERGE_METHODS",
    "MergeMethod",
    "MergeResult",
    "get_merge_method",
    "merge_from_yaml",
    "merge_models",
    "merge_with_config",
    "register_merge_method",
]
