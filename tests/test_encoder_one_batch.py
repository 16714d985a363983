"""Batches that fit in one forward pass skip `SentenceTransformer.encode`'s per-call work and must give its vectors."""

from __future__ import annotations

import numpy as np
import pytest

QUERIES = ["what is faiss?", "who wrote the origin of species and when was it published", "cats", "a" * 40]


def _reference(model, texts, prefix, normalize):
    return model.encode(texts, prompt=prefix or None, normalize_embeddings=normalize, convert_to_numpy=True,
                        show_progress_bar=False, batch_size=len(texts))


@pytest.mark.parametrize(("prefix", "normalize"), [("", True), ("query: ", True), ("query: ", False)])
def test_one_batch_equals_sentence_transformers_encode(minilm_encoder, prefix, normalize):
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model, query_prefix=prefix, normalize=normalize,
                                    batch_size=32), model=minilm_encoder.model)
    ours = encoder.encode_queries(QUERIES)  # one batch: the direct path
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(ours, _reference(encoder.model, QUERIES, prefix, normalize), atol=2e-6)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_large_batches_still_go_through_encode_and_agree(minilm_encoder):
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model, batch_size=2), model=minilm_encoder.model)
    several = encoder.encode_queries(QUERIES)  # 4 texts > batch_size 2: SentenceTransformer.encode
    single = np.vstack([encoder.encode_queries([q]) for q in QUERIES])  # one text each: the direct path
    np.testing.assert_allclose(several, single, atol=2e-6)


def test_a_model_left_in_training_mode_is_encoded_without_dropout(minilm_encoder):
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model), model=minilm_encoder.model)
    expected = encoder.encode_queries(QUERIES)
    encoder.model.train()  # e.g. a retriever that an RL loop trains between searches
    try:
        again = [encoder.encode_queries(QUERIES) for _ in range(2)]
        assert not encoder.model.training
    finally:
        encoder.model.eval()
    for vectors in again:
        np.testing.assert_allclose(vectors, expected, atol=2e-6)


def test_the_models_truncate_dim_applies(minilm_encoder):
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model), model=minilm_encoder.model)
    before = encoder.model.truncate_dim
    encoder.model.truncate_dim = 64
    try:
        ours = encoder.encode_queries(QUERIES)
        reference = _reference(encoder.model, QUERIES, "", True)
    finally:
        encoder.model.truncate_dim = before
    assert ours.shape == (len(QUERIES), 64)
    np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_query_batches_larger_than_batch_size_equal_sentence_transformers_encode(minilm_encoder):
    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model, batch_size=3), model=minilm_encoder.model)
    texts = [f"{q} {i}" * (1 + i % 3) for i, q in enumerate(QUERIES * 3)]  # 12 texts of varied length: 4 batches
    np.testing.assert_allclose(encoder.encode_queries(texts), _reference(encoder.model, texts, "", True), atol=2e-6)


def test_encode_queries_is_safe_from_several_threads(minilm_encoder):
    """A server's search streams call encode_queries at once: every result equals the one-thread result."""
    from concurrent.futures import ThreadPoolExecutor

    from embedkit.encoding import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=minilm_encoder.config.model, batch_size=4), model=minilm_encoder.model)
    assert encoder.thread_safe
    texts = [f"question {i}: {QUERIES[i % len(QUERIES)]}" for i in range(10)]
    expected = encoder.encode_queries(texts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: encoder.encode_queries(texts), range(16)))
    for vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=2e-6)
