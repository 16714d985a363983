"""Merge preconditions checked before any model trains: a BOOM run that can only fail at the merge must
fail in seconds, not after every bag has trained.

Checked: mergekit is installed; the method takes this many models and (or no) base model; the weights and
parameters make a valid recipe (built with placeholder paths, nothing loaded); the task-vector base exists
and is a model folder. A base that is a plain transformers folder (e.g. the decoder checkpoint the bags
start from) cannot be merged as it is — the bags are sentence-transformers models whose transformer is the
backbone *without* its LM head, under other tensor names — so it is turned into the embedder the bags start
from (`embedder_base`: the same `build_model` the trainer calls, untrained) and that folder is the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError

#: Where a run keeps the embedder built from a plain transformers base (inside its output folder).
MERGE_BASE_DIR = "merge-base"
MERGE_BASE_MARKER = "embedkit_merge_base.json"


def require_mergekit() -> None:
    """Refuse early when mergekit (the `merge` extra) is missing."""
    try:
        import mergekit  # noqa: F401
    except ImportError:
        raise EmbedkitError("merging needs mergekit: pip install 'embedkit[merge]'") from None


def check_base_folder(base: str | None) -> None:
    """A task-vector base must be a model: a sentence-transformers or transformers folder, or a hub id."""
    if base is None:
        return
    path = Path(base)
    if path.is_dir():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise EmbedkitError(f"merge base {base} is a folder without modules.json or config.json: not a model")
        return
    looks_like_hub_id = base.count("/") == 1 and not base.startswith((".", "/")) and not path.suffix
    if not looks_like_hub_id:
        raise EmbedkitError(f"merge base {base} does not exist")


def is_plain_transformers(base: str | None) -> bool:
    """True for a transformers model that is not a sentence-transformers model: a local folder without
    modules.json, or a hub id whose repository has none (how the trainer decides to wrap it, too)."""
    if base is None:
        return False
    if Path(base).is_dir():
        return not (Path(base) / "modules.json").exists()
    from embedkit.training.modeling import _hub_is_sentence_transformer

    return not _hub_is_sentence_transformer(base)


def check_recipe(method: str, models: list[str], weights: list[float] | None, base: str | None,
                 parameters: dict[str, Any] | None) -> None:
    """Build the mergekit recipe with the paths the models will have (nothing is read) so a recipe mergekit
    would refuse is refused now."""
    from embedkit.merging.methods import mergekit_config_dict

    mergekit_config_dict(method, models, weights=weights, base_model=base, parameters=parameters)


def embedder_base(base: str, training: dict[str, Any], out_dir: Path) -> str:
    """The embedder a plain transformers `base` becomes when training starts from it (Transformer + the
    pooling/normalization the trainer adds, untrained), saved once under `out_dir`; returns its path.
    `training`: the run's TrainConfig options (pooling, max_seq_length, …) so the wrapping is the bags'."""
    import json

    from embedkit.io import atomic_directory
    from embedkit.training.config import TrainConfig
    from embedkit.training.modeling import build_model

    target = out_dir / MERGE_BASE_DIR
    if (target / MERGE_BASE_MARKER).exists():
        recorded = json.loads((target / MERGE_BASE_MARKER).read_text())
        if recorded.get("base") == str(base):
            return str(target)
    options = {k: v for k, v in training.items() if k not in ("lora", "dtype")}
    config = TrainConfig(model=str(base), output_dir=str(target), datasets=[{"name": "x", "path": "x.jsonl"}],
                         dtype="float32", lora={"enabled": False}, **options)
    model = build_model(config, device="cpu", lora=False)
    with atomic_directory(target, overwrite=True, marker=MERGE_BASE_MARKER, what="model") as tmp:
        model.save(str(tmp))
        (tmp / MERGE_BASE_MARKER).write_text(json.dumps({
            "base": str(base),
            "why": "task vectors are taken relative to the embedder the bags start from: this plain "
                   "transformers base wrapped as the trainer wraps it, untrained"}, indent=2))
    return str(target)
