"""Issue 24, BM25: a running `embedkit serve` follows `embedkit index add/remove` of the BM25 index it serves.

Clients keep asking while the folder is updated; every answer must come from one committed state (the old
documents or the new ones, never a mix), and the server ends on the new state without a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from embedkit.lexical import BM25Settings, build_bm25_index
from tests.helpers import write_jsonl
from tests.test_bm25_updates import doc, needs_java

pytestmark = pytest.mark.slow

FIRST = {"d0": "cats purr and hunt mice", "d1": "dogs bark and fetch", "d2": "bread needs flour and yeast"}
ADDED = [{"_id": "n1", "title": "", "text": "a volcano erupts molten lava"},
         {"_id": "d1", "title": "", "text": "lava cools into black rock"}]  # d1 replaced


@pytest.mark.parametrize("backend", ["bm25s"])  # pyserini: the in-process test below (a JVM server is slow)
def test_server_serves_the_updated_bm25_index(backend, tmp_path):
    from tests.test_server_clients import start_server, stop_server

    index = build_bm25_index([doc(i, t.split()) for i, t in FIRST.items()], tmp_path / "bm25",
                             BM25Settings(backend=backend))
    process, url = start_server(index, "--set", "reload.poll_seconds=0.2")
    try:
        slot, count = next(iter(httpx.get(url + "/health", timeout=30).json()["documents"].items()))
        assert count == 3
        answers: list[tuple[int, list[str]]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    response = http.post(url + "/retrieve", json={"queries": ["lava volcano dogs"], "topk": 5})
                    ids = [hit["id"] for hit in response.json()["result"][0]] if response.status_code == 200 else []
                    answers.append((response.status_code, ids))
                    time.sleep(0.02)

        worker = threading.Thread(target=client)
        worker.start()
        try:
            corpus = write_jsonl(tmp_path / "more.jsonl", ADDED)
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            added = subprocess.run([sys.executable, "-m", "embedkit", "index", "add", str(index), "--corpus",
                                    str(corpus)], capture_output=True, text=True, timeout=600, env=env)
            assert added.returncode == 0, added.stderr
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if httpx.get(url + "/health", timeout=30).json()["documents"][slot] == 4:
                    break
                time.sleep(0.1)
            time.sleep(0.3)  # a few more requests on the new state
        finally:
            stop.set()
            worker.join(timeout=60)
        assert all(status == 200 for status, _ in answers), answers
        old, new = ["d1"], ["n1", "d1"]  # "dogs" finds the old d1; "lava volcano" the new n1 and d1
        states = [ids for _, ids in answers]
        assert all(state in (old, new) for state in states), states
        assert states[0] == old and states[-1] == new
    finally:
        stop_server(process)


@needs_java
def test_service_reloads_an_updated_lucene_index(tmp_path):
    """The server's reload path (`RetrievalService.reload_if_changed`) on a pyserini index: an add, then a
    remove, each picked up between requests."""
    import asyncio

    from embedkit.index import Index
    from embedkit.lexical.update import add_documents, remove_documents
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    index = build_bm25_index([doc(i, t.split()) for i, t in FIRST.items()], tmp_path / "bm25",
                             BM25Settings(backend="pyserini"))
    service = RetrievalService(ServerConfig(index=str(index), reload={"enabled": False}),
                               {"bm25": Index.load(index)})

    async def ids(query: str) -> list[str]:
        return [hit.id for hit in (await service.search([query], 5))[0]]

    async def scenario() -> list[list[str]]:
        await service.start()
        try:
            seen = [await ids("lava volcano dogs")]
            add_documents(index, [doc(r["_id"], r["text"].split()) for r in ADDED])
            assert await service.reload_if_changed("bm25")
            seen.append(await ids("lava volcano dogs"))
            remove_documents(index, ["n1"])
            assert await service.reload_if_changed("bm25")
            seen.append(await ids("lava volcano dogs"))
            assert service.health()["documents"] == {"bm25": 3}
            return seen
        finally:
            await service.stop()

    assert asyncio.run(scenario()) == [["d1"], ["n1", "d1"], ["d1"]]
