"""Run a sentence-transformers model's transformer through ONNX Runtime: `EncoderConfig(backend="onnx")`.

Why: on a CPU, a one-query forward pass of a small encoder is mostly torch's per-operator cost. For
all-MiniLM-L6-v2 on one core it is about 20 ms in torch and 10 ms in ONNX Runtime. ONNX Runtime also
releases the GIL for the whole pass, so a server's search threads encode in parallel. On batches of 64 the two
are about as fast, so this backend pays off where queries come one or a few at a time.

How: the model's first module (the Hugging Face transformer) is exported once with `torch.onnx.export`
(dynamic batch and sequence axes) into the cache folder (`embedkit.paths.cache_dir()`, one folder per weights
fingerprint; written with `embedkit.io.atomic_directory`, so a killed export leaves nothing half-written and
concurrent servers export once). Everything after it (pooling, dense layers, normalization) still runs in torch, so each
sentence-transformers pipeline keeps its own semantics. Every load compares the graph with the torch model on
probe texts and refuses a graph that disagrees, so a stale or damaged cache can never change results.

    >>> from embedkit.encoding import Encoder, EncoderConfig
    >>> encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2", backend="onnx"))
    >>> encoder.encode_queries(["what is faiss?"]).shape
    (1, 384)

Threads: a call uses as many ONNX Runtime threads as `torch.get_num_threads()` on the calling thread, so one
setting (`torch.set_num_threads`, which the server sets per search stream) sizes both runtimes. Each thread count
used gets its own session, which holds its own copy of the weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError, ModelUnavailableError

log = logging.getLogger(__name__)

GRAPH_NAME = "model.onnx"
#: Largest difference from the torch model allowed on the probe texts (float32 graphs differ by about 1e-5).
MAX_PROBE_DIFFERENCE = 1e-3
# Two texts of different lengths: the padded batch exercises the attention mask, and neither axis has size 1,
# so the exporter keeps both dynamic.
PROBE_TEXTS = ("embedkit probe", "a longer probe sentence, so the batch needs padding and a real attention mask")


class OnnxTransformer:
    """The first module of a SentenceTransformer, run by ONNX Runtime; fills `features["token_embeddings"]`."""

    def __init__(self, model: Any, fingerprint: str, *, name: str = "the model", cache: Path | None = None) -> None:
        from embedkit.paths import cache_dir

        _require("onnxruntime")
        if not callable(getattr(model, "preprocess", None)):  # and the modules' modality_config
            raise EmbedkitError("the onnx encoder backend needs sentence-transformers >= 6")
        self.model, self.name = model, name
        self.transformer = _text_transformer(model)
        self.output_name = getattr(self.transformer, "module_output_name", "token_embeddings")
        self.input_names = _input_names(self.transformer)
        self.folder = (cache or cache_dir()) / "onnx" / fingerprint
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        """Use the cached graph when it matches the torch model; otherwise (re-)export it once.

        Under the folder's lock: a second process starting at the same time waits, then finds the graph.
        """
        from embedkit.io import folder_lock, recover_folder

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.folder):
            recover_folder(self.folder)  # finish or sweep an export killed midway
            if (self.folder / GRAPH_NAME).is_file():
                try:
                    self._check()
                    return
                except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types; damaged or stale
                    log.warning("re-exporting %s: the cached ONNX graph is unusable (%s)", self.folder, error)
                    self._sessions.clear()
            _export(self.model, self.transformer, self.input_names, self.folder)
            self._check()

    def _check(self) -> None:
        import torch

        features = self.model.preprocess(list(PROBE_TEXTS))
        with torch.inference_mode():
            expected = self.transformer(dict(features))[self.output_name].float().numpy()
        actual = self._run(features, threads=1)
        mask = features["attention_mask"].numpy().astype(bool)
        difference = float(np.abs(actual - expected)[mask].max()) if actual.shape == expected.shape else float("inf")
        if not difference <= MAX_PROBE_DIFFERENCE:
            raise ModelUnavailableError(
                f"the ONNX export of {self.name} in {self.folder} gives token embeddings that differ from the "
                f"torch model by {difference:.3g} (allowed {MAX_PROBE_DIFFERENCE}); use the torch backend"
            )

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        """The transformer module's forward: token embeddings for `features` (a `model.preprocess` batch)."""
        import torch

        features[self.output_name] = torch.from_numpy(self._run(features, threads=torch.get_num_threads()))
        return features

    def _run(self, features: dict[str, Any], *, threads: int) -> np.ndarray:
        inputs = {name: features[name].numpy() for name in self.input_names}
        return self._session(threads).run(None, inputs)[0]

    def _session(self, threads: int) -> Any:
        session = self._sessions.get(threads)
        if session is None:
            with self._lock:
                session = self._sessions.get(threads)
                if session is None:
                    session = self._sessions[threads] = _open_session(self.folder / GRAPH_NAME, threads)
        return session


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise EmbedkitError(f"the onnx encoder backend needs {module}: pip install 'embedkit[onnx]' "
                            "(onnxruntime runs the model; onnx and onnxscript export it once)")


def _text_transformer(model: Any) -> Any:
    """The model's first module, when it is a text transformer whose forward returns its last hidden state."""
    first = model[0] if len(model) else None
    config = getattr(first, "modality_config", {}).get("text") if first is not None else None
    if config is None or config.get("method") != "forward" or config.get("method_output_name") != "last_hidden_state":
        raise ModelUnavailableError(
            f"the onnx backend runs sentence-transformers models whose first module is a text transformer "
            f"(found {type(first).__name__}); use the torch backend"
        )
    return first


def _input_names(transformer: Any) -> list[str]:
    """The tokenizer outputs the Hugging Face model's forward takes (input_ids, attention_mask, token_type_ids)."""
    import inspect

    accepted = set(inspect.signature(transformer.auto_model.forward).parameters)
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]
    tokenizer_names = set(getattr(transformer.tokenizer, "model_input_names", names))
    return [name for name in names if name in tokenizer_names]


def _export(model: Any, transformer: Any, input_names: list[str], folder: Path) -> None:
    """Export `transformer.auto_model` to `folder/model.onnx`, replacing `folder` only once the export is done."""
    import torch

    from embedkit.io import atomic_directory

    _require("onnx")
    _require("onnxscript")
    name = type(transformer.auto_model).__name__
    log.warning("exporting %s to ONNX once (cached in %s)", name, folder)
    features = model.preprocess(list(PROBE_TEXTS))
    example = {key: features[key] for key in input_names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with atomic_directory(folder, overwrite=True, marker=GRAPH_NAME, what="ONNX export") as work:
            # The exporter reports each stage on stdout and warns about what it skips (torchvision's operators,
            # axis renames); a server's or CLI's output is not the place for it.
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
                    _quiet("torch.onnx", "onnx_ir", "onnxscript"):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _last_hidden_state(transformer.auto_model).eval(), (), str(work / GRAPH_NAME), kwargs=example,
                    input_names=input_names, output_names=["last_hidden_state"], dynamo=True, external_data=True,
                    dynamic_shapes={key: {0: batch, 1: sequence} for key in example}, verbose=False,
                )
    except EmbedkitError:  # disk full, a folder that is not an export: already clear
        raise
    except Exception as error:  # the exporter fails in many ways on architectures it cannot trace
        raise ModelUnavailableError(
            f"cannot export {name} to ONNX: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}; use the torch backend"
        ) from None


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _open_session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads would spin on the cores other search streams need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _last_hidden_state(model: Any) -> Any:
    """`model` as a module that takes the tokenizer's tensors by name and returns only the last hidden state."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
            inputs = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, **{k: v for k, v in inputs.items() if v is not None}).last_hidden_state

    return LastHiddenState()
