"""The onnx encoder backend: the real MiniLM exported by torch.onnx and run by ONNX Runtime gives torch's vectors."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import MINILM

pytestmark = pytest.mark.slow  # one real export (~15 s), then sessions on the real weights

QUERIES = [
    "what is faiss?",
    "who wrote the novel that the 1962 film about an Arabian desert campaign was based on",
    "a",
    "query " * 300,  # past the model's 256 tokens: truncated the same way in both backends
    "naïve café — ünïcödé and emoji 🙂",
]


def _vectors_close(left: np.ndarray, right: np.ndarray) -> float:
    assert left.shape == right.shape and left.dtype == right.dtype == np.float32
    return float(np.abs(left - right).max())


def test_onnx_vectors_equal_torch_vectors_for_queries_and_documents(minilm_encoder, minilm_onnx_encoder):
    from embedkit.data.corpus import Document

    onnx, torch_ = minilm_onnx_encoder, minilm_encoder
    assert onnx.fingerprint == torch_.fingerprint and onnx.spec == torch_.spec  # same model, same index record
    for batch in ([QUERIES[0]], QUERIES, QUERIES * 15):  # one query, one padded batch, several batches of 32
        assert _vectors_close(onnx.encode_queries(batch), torch_.encode_queries(batch)) < 1e-5
    documents = [Document(id=str(i), title=f"Title {i}", text=text * (i + 1)) for i, text in enumerate(QUERIES)]
    assert _vectors_close(onnx.encode_documents(documents), torch_.encode_documents(documents)) < 1e-5


def test_onnx_backend_keeps_the_pipeline_settings(minilm_onnx_encoder):
    """A prefix and small batches behave as in the torch backend (the pooling modules run in torch)."""
    from embedkit.encoding import Encoder, EncoderConfig

    settings = dict(model=MINILM, query_prefix="query: ", normalize=False, batch_size=2)
    onnx = Encoder(EncoderConfig(**settings, backend="onnx"))
    torch_ = Encoder(EncoderConfig(**settings))
    vectors = onnx.encode_queries(QUERIES)
    assert _vectors_close(vectors, minilm_onnx_encoder.encode_queries(QUERIES)) > 0.01  # the prefix is read
    assert _vectors_close(vectors, torch_.encode_queries(QUERIES)) < 1e-5


def test_each_thread_count_gets_a_session_and_the_same_vectors(minilm_onnx_encoder):
    import torch

    results: dict[int, np.ndarray] = {}

    def encode(threads: int) -> None:
        torch.set_num_threads(threads)  # per thread, as the server's search streams set it
        results[threads] = minilm_onnx_encoder.encode_queries(QUERIES)

    workers = [threading.Thread(target=encode, args=(n,)) for n in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert {1, 2} <= set(minilm_onnx_encoder._onnx._sessions)
    assert _vectors_close(results[1], results[2]) < 1e-5


def test_the_export_is_cached_and_reused(minilm_onnx_encoder, onnx_cache):
    from embedkit.encoding import Encoder, EncoderConfig

    graph = onnx_cache / "onnx" / minilm_onnx_encoder.fingerprint / "model.onnx"
    before = graph.stat()
    Encoder(EncoderConfig(model=MINILM, backend="onnx"))
    after = graph.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not exported again


def test_a_damaged_cache_is_exported_again_and_abandoned_exports_are_removed(minilm_onnx_encoder, onnx_cache,
                                                                             tmp_path, monkeypatch):
    """The cache is written like an index folder (`atomic_directory`): a killed export's work folder is swept."""
    from embedkit.encoding import Encoder, EncoderConfig

    fingerprint = minilm_onnx_encoder.fingerprint
    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache / "onnx" / fingerprint, cache / "onnx" / fingerprint)
    graph = cache / "onnx" / fingerprint / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])  # a half-written file from some other tool
    killed = cache / "onnx" / f"{fingerprint}.tmp-4000000-0badf00d"  # an export killed midway
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half")
    unrelated = cache / "onnx" / "notes.txt"
    unrelated.write_text("not ours to delete")
    monkeypatch.setenv("EMBEDKIT_CACHE", str(cache))

    encoder = Encoder(EncoderConfig(model=MINILM, backend="onnx"))
    assert graph.stat().st_size > 1000
    assert _vectors_close(encoder.encode_queries(QUERIES), minilm_onnx_encoder.encode_queries(QUERIES)) < 1e-5
    assert not killed.exists() and unrelated.exists()
    names = {path.name for path in (cache / "onnx").iterdir()}
    assert names - {f".{fingerprint}.lock"} == {fingerprint, "notes.txt"}


@pytest.mark.parametrize("setting", [{"device": "cuda"}, {"dtype": "float16"}])
def test_onnx_backend_refuses_other_devices_and_precisions(setting):
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.errors import EmbedkitError

    with pytest.raises(EmbedkitError, match="onnx backend runs float32 on the CPU"):
        Encoder(EncoderConfig(model=MINILM, backend="onnx", **setting))


def test_a_model_without_a_text_transformer_is_refused(onnx_cache):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from transformers import AutoTokenizer

    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.encoding.models import resolve_model
    from embedkit.errors import ModelUnavailableError

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    static = SentenceTransformer(modules=[StaticEmbedding(tokenizer.backend_tokenizer, embedding_dim=8)], device="cpu")
    with pytest.raises(ModelUnavailableError, match="first module is a text transformer"):
        Encoder(EncoderConfig(model="static", backend="onnx"), model=static)


def test_a_model_without_token_type_ids_exports_and_matches(onnx_cache, tmp_path):
    """A random-init DistilBERT (its forward takes no token_type_ids) through sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.encoding.models import resolve_model

    folder = tmp_path / "tiny-distilbert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                              max_position_embeddings=128)
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=64)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu").save(str(tmp_path / "st"))

    onnx = Encoder(EncoderConfig(model=str(tmp_path / "st"), backend="onnx"))
    assert onnx._onnx.input_names == ["input_ids", "attention_mask"]
    torch_ = Encoder(EncoderConfig(model=str(tmp_path / "st")))
    assert _vectors_close(onnx.encode_queries(QUERIES), torch_.encode_queries(QUERIES)) < 1e-5


def test_a_server_with_the_onnx_backend_answers_as_the_torch_one(minilm_encoder, onnx_cache, small_corpus, tmp_path):
    """`embedkit serve --encoder-backend onnx` over a real socket: Search-R1's /retrieve, same hits and scores."""
    import httpx

    from embedkit.data import iter_documents
    from embedkit.index import Index, build_dense_index
    from embedkit.server.app import create_app
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService, open_index
    from tests.helpers import running_server

    folder = build_dense_index(iter_documents(small_corpus), minilm_encoder, tmp_path / "dense", quiet=True)
    config = ServerConfig(index=str(folder), encoder_backend="onnx", device="cpu", search_streams=2)
    index = open_index(Path(folder), config, None)
    assert index.encoder._onnx is not None
    queries = ["small felines that purr", "vector similarity search library", "baking bread"]
    with running_server(create_app(config, RetrievalService(config, {"dense": index})), lifespan="on") as url:
        answer = httpx.post(f"{url}/retrieve", json={"queries": queries, "topk": 3, "return_scores": True},
                            timeout=60).json()["result"]
    expected = Index.load(folder, encoder=minilm_encoder).search(queries, 3)
    assert [[hit["document"]["id"] for hit in hits] for hits in answer] == [[h.id for h in hits] for hits in expected]
    for hits, reference in zip(answer, expected, strict=True):
        assert np.allclose([hit["score"] for hit in hits], [h.score for h in reference], atol=1e-5)
