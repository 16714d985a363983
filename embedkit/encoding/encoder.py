"""The encoder: a sentence-transformers model plus the prefixes and settings an index records."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np
from tqdm.auto import tqdm

from embedkit.data.corpus import Document
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding.config import Backend, EncoderConfig, EncoderSpec
from embedkit.encoding.device import pick_device, pick_dtype
from embedkit.encoding.models import canonical_model_name, load_sentence_transformer, weights_fingerprint
from embedkit.errors import EmbedkitError, ModelMismatchError

# Texts are cut before tokenisation so a huge document costs memory for what the model reads, not for its
# whole length. The first look tokenises max_length x FIRST_WINDOW characters; a text with fewer tokens than
# that (long runs of spaces, very long "words") gets a window 8x larger, up to max_length x MAX_CHARS_PER_TOKEN
# characters, past which the text is cut whatever its token count.
FIRST_WINDOW_CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 1024
# Tokens kept past the model's limit when cutting, so the cut never changes the tokens the model reads.
CUT_MARGIN_TOKENS = 16


class Encoder:
    """Encode queries and documents the same way every time.

    >>> encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
    >>> encoder.encode_queries(["what is faiss?"]).shape
    (1, 384)
    """

    def __init__(self, config: EncoderConfig, *, model=None) -> None:
        self.config = config
        #: documents (since this encoder was created) with more tokens than the model reads; their end is cut.
        self.truncated_documents = 0
        self._budget: int | None | bool = False  # text tokens the model reads; computed on first use
        self._prompt_tokens: dict[str, int] = {}
        # ONNX Runtime runs on the CPU here, so "auto" means the CPU for it.
        self.device = pick_device("cpu" if config.backend == "onnx" and config.device == "auto" else config.device)
        if config.backend == "onnx" and (self.device != "cpu" or config.dtype not in ("auto", "float32")):
            raise EmbedkitError(f"the onnx backend runs float32 on the CPU (asked: device {config.device}, dtype "
                                f"{config.dtype}); use the torch backend for other devices and precisions")
        self.model = model or load_sentence_transformer(config.model, device=self.device, max_length=config.max_length)
        # Fingerprint before any precision change so it identifies the weights, not the inference dtype.
        self.fingerprint = weights_fingerprint(self.model)
        dtype = pick_dtype(config.dtype, self.device)
        if dtype != next(self.model.parameters()).dtype:
            self.model.to(dtype)
        self._onnx = None
        if config.backend == "onnx":
            from embedkit.encoding.onnx_backend import OnnxTransformer

            self.model.eval()
            self._onnx = OnnxTransformer(self.model, self.fingerprint, name=f"'{config.model}'")
        # A Hugging Face fast tokenizer raises "Already borrowed" when one thread re-configures it (padding,
        # truncation) while another uses it; forward passes only read the weights and may run side by side (a
        # server encodes queries from several threads).
        self._preprocess_lock = threading.Lock()
        self.query_prefix = self._prefix(config.query_prefix, config.query_instruction, "query")
        self.passage_prefix = self._prefix(config.passage_prefix, None, "document")

    @classmethod
    def from_spec(cls, spec: EncoderSpec, *, model_path: str | None = None, device: str = "auto",
                  batch_size: int = DEFAULT_BATCH_SIZE, backend: Backend = "torch") -> Encoder:
        """Rebuild the query encoder an index was built with; refuse weights that differ from the recorded ones."""
        config = EncoderConfig(
            backend=backend,
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

    @property
    def thread_safe(self) -> bool:
        """True when `encode_queries` may run on several threads at once (sentence-transformers >= 6)."""
        return callable(getattr(self.model, "preprocess", None))

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        # One batch, or the onnx backend: our own batches. Many torch batches: sentence-transformers' encode.
        if self.thread_safe and (self._onnx is not None or 0 < len(texts) <= self.config.batch_size):
            return self._encode_batches(list(texts), prefix)
        vectors = self.model.encode(
            list(texts),
            prompt=prefix or None,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _encode_one_batch(self, texts: list[str], prefix: str) -> np.ndarray:
        """One forward pass through the model's own `preprocess` and modules, as `SentenceTransformer.encode` runs it.

        `encode` also puts the model in eval mode and resolves its device on every call: on a CPU that is
        about 3 ms of Python holding the GIL, some 15% of a one-query search, paid by every small batch a
        server encodes from its search threads. Here eval mode is set only when the model is training.
        """
        import torch
        from sentence_transformers.util import batch_to_device, truncate_embeddings

        model = self.model
        if model.training:
            model.eval()
        with self._preprocess_lock:
            features = model.preprocess(texts, prompt=prefix or None)
        with torch.inference_mode():
            if self._onnx is not None:  # the transformer in ONNX Runtime, the modules after it in torch
                features = self._onnx.forward(features)
                for module in list(model)[1:]:
                    features = module(features)
            else:
                features = model(batch_to_device(features, model.device))
            embeddings = features["sentence_embedding"]
            embeddings = truncate_embeddings(embeddings, getattr(model, "truncate_dim", None))
            if self.config.normalize:
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return np.ascontiguousarray(embeddings.float().cpu().numpy(), dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors; safe to call from several threads at once when `thread_safe` (a server's streams do)."""
        # Only a character cap here, no tokenizer call outside the lock.
        limit = getattr(self.model, "max_seq_length", None)
        cap = int(limit) * MAX_CHARS_PER_TOKEN if limit else None
        texts = [query[:cap] for query in queries] if cap else list(queries)
        if self.thread_safe:
            return self._encode_batches(texts, self.query_prefix)
        return self._encode(texts, self.query_prefix)

    def _encode_batches(self, texts: list[str], prefix: str) -> np.ndarray:
        """Batches of `batch_size` through `_encode_one_batch`, longest texts first as sentence-transformers
        batches them, so each batch pads to similar lengths."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            vectors[rows] = self._encode_one_batch([texts[i] for i in rows], prefix)
        return vectors

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        return self._encode(self.document_texts(documents), self.passage_prefix)

    def document_texts(self, documents: Sequence[Document]) -> list[str]:
        """Title and text of each document as the model will read them: cut past the model's max length.

        Documents longer than the max length are counted in `truncated_documents`.
        """
        budget = self._text_budget(self.passage_prefix)
        # One character past the hard cap, so `fit_texts` sees (and counts) that the text went on.
        cap = None if budget is None else budget * MAX_CHARS_PER_TOKEN + 1
        return self.fit_texts([_joined_prefix(doc, cap) for doc in documents], self.passage_prefix)

    def fit_texts(self, texts: list[str], prefix: str = "", *, count: bool = True) -> list[str]:
        """Cut each text shortly after the point where the model stops reading, without tokenising the rest.

        The tokens the model reads are unchanged (the cut keeps a margin of tokens past the limit).
        """
        budget = self._text_budget(prefix)
        if budget is None:
            return texts
        tokenizer = self.model.tokenizer
        fitted = list(texts)
        window, cap = budget * FIRST_WINDOW_CHARS_PER_TOKEN, budget * MAX_CHARS_PER_TOKEN
        # Texts shorter than budget/4 characters fit whatever the tokenizer (at most 4 UTF-8 bytes a character).
        pending = [i for i, text in enumerate(texts) if 4 * len(text) + 1 > budget]
        while pending:
            windows = [texts[i][:window] for i in pending]
            with self._preprocess_lock:  # other settings than preprocess's: the tokenizer would be re-configured
                encoded = tokenizer(windows, add_special_tokens=False, return_attention_mask=False,
                                    return_token_type_ids=False, return_offsets_mapping=bool(tokenizer.is_fast),
                                    verbose=False)
            offsets = encoded.get("offset_mapping")
            retry = []
            for slot, index in enumerate(pending):
                tokens, text, seen = len(encoded["input_ids"][slot]), texts[index], windows[slot]
                keep = budget + CUT_MARGIN_TOKENS
                if tokens > keep or (tokens > budget and len(seen) == len(text)):
                    self.truncated_documents += count
                    cut = len(seen)
                    if offsets is not None and tokens > keep:
                        # End of token `keep`, moved back to a space still past the last token read, so no
                        # word the model reads is cut (WordPiece/BPE split words from the left).
                        read_end, cut = offsets[slot][budget - 1][1], offsets[slot][keep - 1][1]
                        space = text.rfind(" ", read_end, cut)
                        cut = space if space > read_end else cut
                    fitted[index] = text[:cut]
                elif len(seen) < len(text):
                    if window >= cap:  # hardly any tokens in a huge text: cut it at the hard cap
                        self.truncated_documents += count
                        fitted[index] = seen
                    else:
                        retry.append(index)
            pending, window = retry, min(window * 8, cap)
        return fitted

    def _text_budget(self, prefix: str) -> int | None:
        """Tokens of text the model reads after its special tokens and the prompt; None when unknown."""
        if self._budget is False:
            tokenizer = getattr(self.model, "tokenizer", None)
            limit = getattr(self.model, "max_seq_length", None)
            if tokenizer is None or not callable(tokenizer) or not limit:
                self._budget = None
            else:
                special = tokenizer.num_special_tokens_to_add(pair=False) \
                    if hasattr(tokenizer, "num_special_tokens_to_add") else 0
                self._budget = max(int(limit) - special, 1)
        if self._budget is None:
            return None
        if prefix not in self._prompt_tokens:
            self._prompt_tokens[prefix] = len(self.model.tokenizer(prefix, add_special_tokens=False)["input_ids"]) \
                if prefix else 0
        return max(int(self._budget) - self._prompt_tokens[prefix], 1)

    def iter_encoded(
        self, documents: Iterable[Document], *, total: int | None = None, quiet: bool = False
    ) -> Iterator[tuple[list[Document], np.ndarray]]:
        """Stream (documents, vectors) chunk by chunk; only one chunk of text is held in memory.

        Each chunk is sorted by length once, so batches hold texts of similar length and little time goes
        to padding; the progress bar advances every few batches with docs/s and ETA. Texts are cut past the
        model's max length before tokenisation (see `fit_texts`), so one huge document costs little memory.
        """
        iterator = iter(documents)
        with tqdm(total=total, unit="doc", desc="encoding", disable=quiet, smoothing=0.05) as bar:
            while chunk := list(islice(iterator, self.config.chunk_size)):
                yield chunk, self._encode_sorted(self.document_texts(chunk), self.passage_prefix, bar)

    def _encode_sorted(self, texts: list[str], prefix: str, bar: tqdm) -> np.ndarray:
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.config.batch_size * 4
        for start in range(0, len(texts), step):
            rows = order[start : start + step]
            vectors[rows] = self._encode([texts[row] for row in rows], prefix)
            bar.update(len(rows))
        return vectors


def _joined_prefix(doc: Document, cap: int | None) -> str:
    """`doc.joined()`, or its first `cap` characters without copying the whole of a huge text first."""
    if cap is None or len(doc.text) + len(doc.title) < cap:
        return doc.joined()
    return Document(id=doc.id, text=doc.text[:cap], title=doc.title[:cap]).joined()[:cap]


def _pooling_mode(model) -> str:
    for module in model:
        mode = getattr(module, "get_pooling_mode_str", None)
        if mode is not None:
            return mode()
        config = getattr(module, "get_config_dict", None)
        if config is not None and "pooling_mode" in config():
            return str(config()["pooling_mode"])
    return "unknown"
