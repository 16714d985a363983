"""Helpers that tests import (`from tests.helpers import …`); fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

#: A two-hop question's corpus (id, title, text): the film, its star, a distractor on the same star, noise.
MULTIHOP_DOCS = [
    ("k1", "Kiss and Tell (1945 film)",
     "Kiss and Tell is a 1945 comedy film starring Shirley Temple as the teenager Corliss Archer."),
    ("s1", "Shirley Temple",
     "Shirley Temple Black was an American actress. She held the government position of Chief of Protocol."),
    ("m1", "Meet Corliss Archer", "Meet Corliss Archer is a radio sitcom that ran on CBS from 1943 to 1956."),
    ("v1", "Volcano", "A volcano erupts when molten rock rises through the crust of a planet."),
    ("b1", "Bread", "Bread is baked from flour, water, salt and yeast in an oven."),
]


# (query, positive, negative) on six topics: training rows for tiny models.
TOPIC_TRIPLES = [
    ("what protein is in the cell", "the protein of the cell", "the river of the city"),
    ("who is the king", "the king was born in the capital", "gene dna rna"),
    ("what is the capital city", "the capital city of the country", "blood heart brain"),
    ("cancer treatment study", "patients treatment of cancer", "film music band"),
    ("which film music", "film music band album", "physics chemistry"),
    ("heart risk in patients", "heart disease risk of patients", "the war of the king"),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


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
