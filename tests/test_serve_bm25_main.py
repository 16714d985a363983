"""`embedkit serve` with a BM25 index as the main one, and the shipped configs/serve.yaml on a BM25-only server.

1. `--retrieve-mode` defaults to "the main index's kind" (serve --help, the `retrieve_mode` field, the comment in
   configs/serve.yaml): `embedkit serve BM25 --bm25 DENSE` must answer /retrieve with BM25, while
   `embedkit serve DENSE --bm25 BM25` answers with dense search. /retrieve used to search dense whenever a dense
   index was served.
2. configs/serve.yaml spells out the defaults of the dense-only settings (`backend: faiss`,
   `encoder_backend: torch`, `mmap: false`); used as documented with a BM25 index it was refused ("only a dense
   index takes this setting"). Only a value other than the default is refused.

Each server is a real `python -m embedkit serve …` process asked over a socket.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, write_jsonl
from tests.test_index_integrity import assert_user_error, embedkit
from tests.test_serve_every_kind import ASKED, ROOT, Server, cli, corpus_records, query_of
from tests.test_server_clients import stop_server

pytestmark = pytest.mark.slow

SHIPPED_CONFIG = ROOT / "configs" / "serve.yaml"

#: name -> `embedkit serve` arguments, by folder name.
SERVERS = {
    "bm25-main": ["{bm25}", "--bm25", "{flat}"],        # a BM25 index as the main one, a dense one beside it
    "dense-main": ["{flat}", "--bm25", "{bm25}"],       # README's order
    "bm25-main-dense-mode": ["{bm25}", "--bm25", "{flat}", "--retrieve-mode", "dense"],
    "bm25-shipped-config": ["{bm25}", "--config", str(SHIPPED_CONFIG)],   # the template, as documented
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    from embedkit.training.tiny import build_tiny_bert

    base = tmp_path_factory.mktemp("serve-bm25-main")
    model = build_tiny_bert(base / "tiny", seed=3, hidden_size=32, layers=1)
    corpus = write_jsonl(base / "corpus.jsonl", corpus_records())
    out = {"flat": base / "flat", "bm25": base / "bm25"}
    cli("index", "build", "--corpus", corpus, "--model", model, "--device", "cpu", "--out", out["flat"], "--quiet")
    cli("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus, "--out", out["bm25"],
        "--quiet")
    return out


@pytest.fixture(scope="module")
def servers(folders):
    started: dict[str, Server] = {}
    try:
        for name, args in SERVERS.items():
            started[name] = Server([arg.format(**folders) for arg in args])
        deadline = time.monotonic() + 400
        for server in started.values():
            server.wait_ready(deadline)
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                stop_server(server.process)
            server.log.close()


def ask(url: str, path: str, body: dict) -> dict:
    response = httpx.post(url + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def retrieve_scores(url: str, query: str) -> list[tuple[str, float]]:
    hits = ask(url, "/retrieve", {"queries": [query], "topk": 3, "return_scores": True})["result"][0]
    return [(hit["document"]["id"], hit["score"]) for hit in hits]


def search_scores(url: str, query: str, mode: str) -> list[tuple[str, float]]:
    hits = ask(url, "/search", {"queries": [query], "mode": mode, "k": 3})["results"][0]
    return [(hit["id"], hit["score"]) for hit in hits]


@pytest.mark.parametrize("name, expected", [("bm25-main", "bm25"), ("dense-main", "dense"),
                                            ("bm25-main-dense-mode", "dense")])
def test_retrieve_defaults_to_the_main_index_kind(servers, name, expected):
    server = servers[name]
    assert server.error is None, f"embedkit serve {' '.join(SERVERS[name])}: {server.error}"
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["modes"] == ["dense", "bm25", "hybrid"], info["modes"]
    assert info["retrieve_mode"] == expected, info["retrieve_mode"]
    query = query_of(ASKED[0])
    answered = retrieve_scores(server.url, query)
    assert answered[0][0] == ASKED[0], answered
    searched = search_scores(server.url, query, expected)
    assert [doc for doc, _ in answered] == [doc for doc, _ in searched], (answered, searched)
    assert [score for _, score in answered] == pytest.approx([score for _, score in searched]), (answered, searched)
    other = [score for _, score in search_scores(server.url, query, "bm25" if expected == "dense" else "dense")]
    assert [score for _, score in answered] != pytest.approx(other)  # the two modes do score differently


def test_shipped_serve_yaml_serves_a_bm25_index(servers):
    """configs/serve.yaml writes out backend: faiss, encoder_backend: torch and mmap: false (the defaults)."""
    text = SHIPPED_CONFIG.read_text()
    for line in ("backend: faiss", "encoder_backend: torch", "mmap: false"):
        assert line in text, line  # what this test is about; if the template changes, revisit it
    server = servers["bm25-shipped-config"]
    assert server.error is None, server.error
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["modes"] == ["bm25"] and info["retrieve_mode"] == "bm25", info
    assert retrieve_scores(server.url, query_of(ASKED[1]))[0][0] == ASKED[1]


@pytest.mark.parametrize("extra, named", [
    (["--backend", "torch"], ["backend=torch", "--backend"]),
    (["--set", "mmap=true"], ["mmap=True", "--mmap"]),
    (["--encoder-backend", "onnx"], ["encoder_backend=onnx", "--encoder-backend"]),
])
def test_shipped_serve_yaml_with_a_dense_only_value_is_refused_on_a_bm25_server(folders, extra, named):
    """A value other than the default would do nothing without a dense index: one line, exit 2."""
    result = embedkit("serve", folders["bm25"], "--config", SHIPPED_CONFIG, "--port", str(free_port()), *extra,
                      timeout=120)
    assert_user_error(result, *named, "only a dense index takes", "is a BM25 index")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for default in ("backend=faiss", "encoder_backend=torch"):
        assert default not in result.stderr, result.stderr  # the template's defaults are not named
