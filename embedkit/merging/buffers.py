"""Keep a model class's non-persistent buffers (BERT's `embeddings.position_ids`, `token_type_ids`…) out of
a merge.

Such a buffer is not a weight: the model class rebuilds it in `__init__` and never loads it from a
checkpoint, so older checkpoints carry it and newer ones (everything transformers 5 saves, e.g. BOOM's
trained bags) do not. Handed to mergekit, a buffer present in the task-vector base but in no merged model
stops the merge ("requires at least 1 non-base inputs"), and one present everywhere gets averaged as if it
were a weight. The buffers are read from the model class itself (a fresh model built on the meta device:
`named_buffers()` minus `state_dict()`), so no list of names is kept here, and each input whose checkpoint
holds one is shown to mergekit through a staged folder: links to its files plus a shard index that leaves
the buffers out (nothing is copied). The merged checkpoint has no buffers; the class rebuilds them on load.

>>> from embedkit.training.tiny import build_tiny_bert
>>> import tempfile
>>> sorted(non_persistent_buffers(build_tiny_bert(f"{tempfile.mkdtemp()}/m")))  # with BertFor*'s prefix, too
['bert.embeddings.position_ids', 'bert.embeddings.token_type_ids', 'embeddings.position_ids', 'embeddings.token_type_ids']
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedInput:
    """The folder mergekit reads for one model, and the checkpoint's buffers it does not see."""

    path: Path
    hidden_buffers: tuple[str, ...] = ()


def non_persistent_buffers(transformer_dir: str | Path) -> frozenset[str]:
    """Names of the buffers that the model class saved in `transformer_dir/config.json` builds itself and
    never loads (empty when the class cannot be built here, e.g. remote code: the merge then sees all)."""
    config_file = Path(transformer_dir) / "config.json"
    if not config_file.exists():
        return frozenset()
    return _class_buffers(config_file.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=16)
def _class_buffers(config_text: str) -> frozenset[str]:
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        data = json.loads(config_text)
        config = AutoConfig.for_model(**data)
        # The class that wrote the checkpoint names its tensors; AutoModel's choice may differ in prefix.
        names = data.get("architectures") or []
        model_class = getattr(transformers, names[0], None) if names else None
        with torch.device("meta"):
            model = model_class(config) if model_class is not None else transformers.AutoModel.from_config(config)
    except Exception as error:  # noqa: BLE001 - any failure only means the buffers stay unknown
        LOG.warning("cannot build the model class to find its buffers (%s); merging every checkpoint tensor",
                    error)
        return frozenset()
    persistent = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers() if name not in persistent}
    prefix = getattr(model, "base_model_prefix", "")
    # A checkpoint written by the bare backbone or by a head class names the same buffer with or without
    # the backbone prefix ("embeddings.position_ids" / "bert.embeddings.position_ids").
    if prefix:
        buffers |= {f"{prefix}.{name}" for name in buffers if not name.startswith(f"{prefix}.")}
        buffers |= {name[len(prefix) + 1:] for name in buffers if name.startswith(f"{prefix}.")}
    return frozenset(buffers)


def stage_without_buffers(transformer_dir: Path, work: Path) -> StagedInput:
    """The folder mergekit should read for `transformer_dir`: the folder itself when its checkpoint holds
    no non-persistent buffer, else `work` with links to its files and a shard index without them."""
    from mergekit.io.lazy_tensor_loader import ShardedTensorIndex

    buffers = non_persistent_buffers(transformer_dir)
    if not buffers:
        return StagedInput(transformer_dir)
    # mergekit's own reader, so the staged index lists exactly the tensors mergekit would have read.
    index = ShardedTensorIndex.from_disk(str(transformer_dir))
    hidden = tuple(sorted(k for k in index.tensor_paths if k in buffers))
    if not hidden:
        return StagedInput(transformer_dir)
    work.mkdir(parents=True)
    index_name = "model.safetensors.index.json" if index.is_safetensors else "pytorch_model.bin.index.json"
    for entry in transformer_dir.iterdir():
        if entry.name != index_name:
            (work / entry.name).symlink_to(entry.resolve())
    weight_map = {k: v for k, v in index.tensor_paths.items() if k not in buffers}
    (work / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
    LOG.info("%s: not merging the non-persistent buffers %s", transformer_dir, ", ".join(hidden))
    return StagedInput(work, hidden)
