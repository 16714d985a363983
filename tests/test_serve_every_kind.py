"""Issue 23: `embedkit serve` on every index kind and combination the docs show, started as a user starts it.

Each server is a real `python -m embedkit serve …` process, asked Search-R1's question over a socket:
`POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}`. The indexes are built once, by the CLI,
over a tiny random BERT: a query that is a document's own text finds that document first (cosine 1 for the
dense kinds; every one of its words for BM25), so each server must answer with the expected top hit.

Shown in the docs and run here: a dense Flat index (README), HNSW and IVF (`embedkit index build --help`),
BM25 alone with each backend (bm25s; pyserini when a Java 21+ runtime is found), dense + `--bm25` (README),
`--backend torch` with `--retrieve-mode hybrid` (serve --help), `--mmap`, and an imported plain FAISS file
served with `embedkit serve --index … --mmap` (`embedkit index import --help`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from embedkit.cli import main
from tests.helpers import free_port, write_jsonl
from tests.test_index_integrity import assert_user_error, embedkit
from tests.test_server_clients import stop_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ANIMALS = ["otter", "heron", "badger", "lynx", "walrus", "gecko", "bison", "falcon"]
PLACES = ["Norway", "Peru", "Kenya", "Japan", "Chile"]
#: Two documents whose own text is asked for; each must come back first.
ASKED = ["otter-norway", "lynx-kenya"]
#: Servers started at once: each start imports torch and loads the model, and the machine has two cores.
CONCURRENT_STARTS = 2


def corpus_records() -> list[dict]:
    return [{"_id": f"{animal}-{place.lower()}", "title": f"{animal.title()} of {place}",
             "text": f"The {animal} of {place} eats what the rivers of {place} bring to the {animal}."}
            for animal in ANIMALS for place in PLACES]


RECORDS = {record["_id"]: record for record in corpus_records()}


def query_of(doc_id: str) -> str:
    """The document as the encoder reads it (title, a space, text): its own vector, and every one of its words."""
    record = RECORDS[doc_id]
    return f"{record['title']} {record['text']}"


def cli(*args: str | Path) -> None:
    """The real CLI, in this process: building the fixtures costs no interpreter start-ups."""
    status = main([str(arg) for arg in args])
    assert status == 0, args


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Every index folder the servers serve, written by the CLI over one corpus and one tiny model."""
    import faiss
    from sentence_transformers import SentenceTransformer

    from embedkit.lexical.java import java_available
    from embedkit.training.tiny import build_tiny_bert

    base = tmp_path_factory.mktemp("serve-kinds")
    model = build_tiny_bert(base / "tiny", seed=3, hidden_size=32, layers=1)
    corpus = write_jsonl(base / "corpus.jsonl", corpus_records())
    out = {"model": model}
    for name, factory in (("flat", "Flat"), ("hnsw", "HNSW32"), ("ivf", "IVF4,Flat")):
        out[name] = base / name
        cli("index", "build", "--corpus", corpus, "--model", model, "--device", "cpu", "--index-factory", factory,
            "--out", out[name], "--quiet")
    # README: `--kind bm25` without a backend takes pyserini when Java 21+ is found, else bm25s.
    out["bm25"] = base / "bm25"
    cli("index", "build", "--kind", "bm25", "--corpus", corpus, "--out", out["bm25"], "--quiet")
    if java_available():
        assert json.loads((out["bm25"] / "manifest.json").read_text())["settings"]["backend"] == "pyserini"
    out["bm25s"] = base / "bm25s"
    cli("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus, "--out", out["bm25s"], "--quiet")
    # A FAISS file built elsewhere (Search-R1's e5_Flat.index layout: row i is corpus record i), then imported.
    vectors = SentenceTransformer(str(model), device="cpu").encode([query_of(r["_id"]) for r in corpus_records()])
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    faiss.write_index(flat, str(base / "e5_Flat.index"))
    out["imported"] = base / "imported"
    cli("index", "import", "--faiss", base / "e5_Flat.index", "--corpus", corpus, "--model", model,
        "--pooling", "mean", "--device", "cpu", "--out", out["imported"], "--quiet")
    return out


#: name -> (the `embedkit serve` arguments, by folder name, and the modes /health must list).
SERVERS: dict[str, tuple[list[str], list[str]]] = {
    "flat": (["{flat}"], ["dense"]),                                              # README
    "flat+bm25": (["{flat}", "--bm25", "{bm25}"], ["dense", "bm25", "hybrid"]),   # README
    "bm25": (["{bm25}"], ["bm25"]),             # `embedkit serve BM25_INDEX`: pyserini where Java is, else bm25s
    "bm25s": (["{bm25s}"], ["bm25"]),
    "torch+bm25s-hybrid": (["{flat}", "--bm25", "{bm25s}", "--backend", "torch", "--retrieve-mode", "hybrid"],
                           ["dense", "bm25", "hybrid"]),
    "hnsw": (["{hnsw}"], ["dense"]),
    "ivf-faiss-mmap": (["{ivf}", "--backend", "faiss", "--mmap"], ["dense"]),
    "imported-mmap": (["--index", "{imported}", "--mmap"], ["dense"]),            # `embedkit index import --help`
}


class Server:
    """One `embedkit serve` process on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "EMBEDKIT_API_KEY": ""}
        self.log = tempfile.TemporaryFile()  # not a pipe: a server that outlives its readers must never block on it
        self.process = subprocess.Popen([sys.executable, "-m", "embedkit", "serve", *args, "--port", str(self.port),
                                         "--log-level", "warning"],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.error: str | None = None

    def wait_ready(self, deadline: float) -> None:
        """Until /health answers; on exit or timeout, `error` says why (the test of this server reports it)."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                self.error = f"exited {self.process.returncode}: {self.log.read().decode()[-3000:]}"
                return
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.error = "did not answer /health in time"


@pytest.fixture(scope="module")
def servers(folders):
    """Every server of SERVERS, started a few at a time, stopped at the end."""
    started: dict[str, Server] = {}
    waiting = [(name, [arg.format(**folders) for arg in args]) for name, (args, _) in SERVERS.items()]
    try:
        while waiting:
            batch, waiting = waiting[:CONCURRENT_STARTS], waiting[CONCURRENT_STARTS:]
            for name, args in batch:
                started[name] = Server(args)
            deadline = time.monotonic() + 300
            for name, _ in batch:
                started[name].wait_ready(deadline)
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                stop_server(server.process)
            server.log.close()


def retrieve(url: str, queries: list[str]) -> list[list[dict]]:
    response = httpx.post(url + "/retrieve", json={"queries": queries, "topk": 3, "return_scores": True},
                          timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.mark.parametrize("name", list(SERVERS))
def test_serve_answers_retrieve_with_the_expected_top_hit(servers, name):
    server = servers[name]
    assert server.error is None, f"embedkit serve {' '.join(SERVERS[name][0])}: {server.error}"
    health = httpx.get(server.url + "/health", timeout=30).json()
    assert health["modes"] == SERVERS[name][1], health
    assert health["documents"] == {mode: len(RECORDS) for mode in health["documents"]}, health

    result = retrieve(server.url, [query_of(doc_id) for doc_id in ASKED])
    assert len(result) == len(ASKED)
    for doc_id, hits in zip(ASKED, result, strict=True):
        assert len(hits) == 3, hits
        top = hits[0]["document"]
        assert top["id"] == doc_id, (name, doc_id, hits)
        # Search-R1 reads the title from the first line of `contents` and the text from the rest.
        assert top["contents"] == f"{RECORDS[doc_id]['title']}\n{RECORDS[doc_id]['text']}"
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True), scores
        if SERVERS[name][1] == ["dense"]:
            assert scores[0] == pytest.approx(1.0, abs=1e-3)  # the document's own (normalised) vector


def test_every_mode_of_a_dense_and_bm25_server(servers):
    """README's `embedkit serve DENSE --bm25 BM25`: /search answers in each mode with the asked document first."""
    server = servers["flat+bm25"]
    assert server.error is None, server.error
    for mode in ("dense", "bm25", "hybrid"):
        response = httpx.post(server.url + "/search", json={"queries": [query_of(ASKED[0])], "mode": mode, "k": 3},
                              timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["results"][0][0]["id"] == ASKED[0], (mode, response.json())


@pytest.mark.parametrize("flags, named", [
    (["--backend", "torch"], ["backend=torch"]),  # the default (faiss) passes: configs/serve.yaml writes it out
    (["--mmap", "--encoder-backend", "onnx"], ["mmap=True", "encoder_backend=onnx"]),
])
def test_dense_settings_on_a_bm25_only_server_are_refused(folders, flags, named):
    """A value other than the default of a setting only a dense index takes would do nothing on a BM25-only
    server: exit 2, one line, no traceback."""
    result = embedkit("serve", folders["bm25s"], "--port", str(free_port()), *flags, timeout=120)
    assert_user_error(result, *named, "only a dense index takes", "is a BM25 index")


def test_two_main_indexes_are_refused(folders):
    result = embedkit("serve", folders["flat"], "--index", folders["hnsw"], "--port", str(free_port()), timeout=120)
    assert_user_error(result, "two main indexes given", "--bm25")
