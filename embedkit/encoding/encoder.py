"""The encoder: a sentence-transformers model plus the prefixes and settings an index records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np
from tqdm.auto import tqdm

from embedkit.data.corpus import Document
from embedkit.encoding.config import EncoderConfig, EncoderSpec
from embedkit.encoding.device import pick_device, pick_dtype
from embedkit.encoding.models import canonical_model_name, load_sentence_transformer, weights_fingerprint
from embedkit.errors import ModelMismatchError


class Encoder:
    """Encode queries and documents the same way every time.

    >>> encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
    >>> encoder.encode_queries(["what is faiss?"]).shape
    (1, 384)
    """

    def __init__(self, config: EncoderConfig, *, model=None) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.model = model or load_sentence_transformer(config.model, device=self.device, max_length=config.max_length)
        # Fingerprint before any precision change so it identifies the weights, not the inference dtype.
        self.fingerprint = weights_fingerprint(self.model)
        dtype = pick_dtype(config.dtype, self.device)
        if dtype != next(self.model.parameters()).dtype:
            self.model.to(dtype)
        self.query_prefix = self._prefix(config.query_prefix, config.query_instruction, "query")
        self.passage_prefix = self._prefix(config.passage_prefix, None, "document")

    @classmethod
    def from_spec(cls, spec: EncoderSpec, *, model_path: str | None = None, device: str = "auto", batch_size: int = 64) -> Encoder:
        """Rebuild the query encoder an index was built with; refuse weights that differ from the recorded ones."""
        config = EncoderConfig(
            model=model_path or spec.model,
            query_prefix=spec.query_prefix,
            passage_prefix=spec.passage_prefix,
            normalize=spec.normalize,
            max_length=spec.max_length,
            device=device,
            batch_size=batch_size,
        )
        encoder = cls(config)
        if encoder.fingerprint != spec.fingerprint:
            raise ModelMismatchError(
                f"model '{config.model}' has weights fingerprint {encoder.fingerprint}, but the index was built "
                f"with '{spec.model}' (fingerprint {spec.fingerprint}); queries must be encoded by the same model"
            )
        return encoder

    def _prefix(self, explicit: str | None, instruction: str | None, prompt_key: str) -> str:
        if instruction is not None:
            return self.config.instruction_template.format(instruction=instruction)
        if explicit is not None:
            return explicit
        # Respect prompts saved with the model (e.g. e5/bge exports), as sentence-transformers users expect.
        prompts = getattr(self.model, "prompts", None) or {}
        keys = (prompt_key, "passage", "corpus") if prompt_key == "document" else (prompt_key,)
        return next((prompts[key] for key in keys if prompts.get(key)), "")

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(
            model=canonical_model_name(self.config.model),
            fingerprint=self.fingerprint,
            pooling=_pooling_mode(self.model),
            normalize=self.config.normalize,
            query_prefix=self.query_prefix,
            passage_prefix=self.passage_prefix,
            max_length=self.model.max_seq_length,
            dim=self.dim,
            similarity=str(getattr(self.model, "similarity_fn_name", None) or "cosine"),
        )

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            prompt=prefix or None,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._encode(queries, self.query_prefix)

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        return self._encode([doc.joined() for doc in documents], self.passage_prefix)

    def iter_encoded(
        self, documents: Iterable[Document], *, total: int | None = None, quiet: bool = False
    ) -> Iterator[tuple[list[Document], np.ndarray]]:
        """Stream (documents, vectors) chunk by chunk; only one chunk of text is held in memory.

        Each chunk is sorted by length once, so batches hold texts of similar length and little time goes
        to padding; the progress bar advances every few batches with docs/s and ETA.
        """
        iterator = iter(documents)
        with tqdm(total=total, unit="doc", desc="encoding", disable=quiet, smoothing=0.05) as bar:
            while chunk := list(islice(iterator, self.config.chunk_size)):
                texts = [doc.joined() for doc in chunk]
                yield chunk, self._encode_sorted(texts, self.passage_prefix, bar)

    def _encode_sorted(self, texts: list[str], prefix: str, bar: tqdm) -> np.ndarray:
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.config.batch_size * 4
        for start in range(0, len(texts), step):
            rows = order[start : start + step]
            vectors[rows] = self._encode([texts[row] for row in rows], prefix)
            bar.update(len(rows))
        return vectors


def _pooling_mode(model) -> str:
    for module in model:
        mode = getattr(module, "get_pooling_mode_str", None)
        if mode is not None:
            return mode()
        config = getattr(module, "get_config_dict", None)
        if config is not None and "pooling_mode" in config():
            return str(config()["pooling_mode"])
    return "unknown"
