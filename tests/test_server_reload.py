"""A running server follows `embedkit index add`: it notices the swapped folder, reloads in the background and
switches between requests; `/health` reports the documents and the manifest version it serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import write_jsonl

pytestmark = pytest.mark.slow

FIRST = [
    {"_id": "d1", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs are loyal companions that bark and love to play fetch."},
    {"_id": "d3", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast."},
    {"_id": "d4", "title": "Python", "text": "Python is a programming language with readable syntax."},
]
ADDED = [
    {"_id": "n1", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
    {"_id": "n2", "title": "Glacier", "text": "A glacier is a slow river of ice that carves valleys."},
]


@pytest.fixture
def index_folder(tmp_path, minilm_encoder) -> Path:
    from embedkit.data import iter_documents
    from embedkit.index import build_dense_index

    corpus = write_jsonl(tmp_path / "first.jsonl", FIRST)
    return Path(build_dense_index(iter_documents(corpus), minilm_encoder, tmp_path / "idx", quiet=True))


def test_server_serves_the_new_state_after_index_add(index_folder, tmp_path):
    from tests.test_server_clients import start_server, stop_server

    process, url = start_server(index_folder, "--set", "reload.poll_seconds=0.2")
    try:
        before = httpx.get(url + "/health", timeout=30).json()
        assert before["documents"] == {"dense": 4} and before["indexes"]["dense"]["documents"] == 4
        first_version = before["indexes"]["dense"]["version"]

        # Clients keep asking while the folder is updated and swapped: every answer must be a whole state.
        answers: list[tuple[int, list[str]]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    response = http.post(url + "/retrieve", json={"queries": ["erupting volcano lava"], "topk": 6})
                    ids = [doc["id"] for doc in response.json()["result"][0]] if response.status_code == 200 else []
                    answers.append((response.status_code, ids))
                    time.sleep(0.02)

        worker = threading.Thread(target=client)
        worker.start()
        try:
            more = write_jsonl(tmp_path / "more.jsonl", ADDED)
            added = subprocess.run([sys.executable, "-m", "embedkit", "index", "add", str(index_folder),
                                    "--corpus", str(more), "--device", "cpu", "-q"],
                                   capture_output=True, text=True, timeout=600,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            assert added.returncode == 0, added.stderr
            deadline = time.monotonic() + 120
            health = before
            while time.monotonic() < deadline:
                health = httpx.get(url + "/health", timeout=30).json()
                if health["documents"]["dense"] == 6:
                    break
                time.sleep(0.1)
            assert health["documents"] == {"dense": 6}, health
            time.sleep(0.3)  # a few more requests on the new state
        finally:
            stop.set()
            worker.join(timeout=60)

        served = health["indexes"]["dense"]
        assert served["version"] != first_version and served["documents"] == 6
        manifest = json.loads((index_folder / "manifest.json").read_text())
        assert manifest["num_docs"] == 6
        assert all(status == 200 for status, _ in answers), answers
        old, new = {"d1", "d2", "d3", "d4"}, {"d1", "d2", "d3", "d4", "n1", "n2"}
        states = [set(ids) for _, ids in answers]
        assert all(state in (old, new) for state in states), states  # never a mix of two states
        assert states[0] == old and states[-1] == new
        top = httpx.post(url + "/retrieve", json={"queries": ["erupting volcano lava"], "topk": 1}, timeout=60).json()
        assert top["result"][0][0]["id"] == "n1"
        info = httpx.get(url + "/info", timeout=30).json()
        assert info["reload"]["reloads"] == 1 and info["reload"]["errors"] == {}
    finally:
        stop_server(process)


def test_a_folder_that_cannot_be_opened_keeps_the_old_state_serving(index_folder, tmp_path, minilm_encoder):
    import asyncio

    from embedkit.index import Index
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    config = ServerConfig(index=str(index_folder), reload={"enabled": False})
    service = RetrievalService(config, {"dense": Index.load(index_folder, encoder=minilm_encoder)})

    async def scenario():
        await service.start()
        try:
            assert await service.reload_if_changed("dense") is False  # nothing changed yet
            # A broken update lands at the path (a manifest that is not JSON).
            broken = tmp_path / "broken"
            shutil.copytree(index_folder, broken)
            (broken / "manifest.json").write_text("{not json")
            held = tmp_path / "held"
            index_folder.rename(held)
            broken.rename(index_folder)
            with pytest.raises(Exception, match="manifest"):
                await service.reload_if_changed("dense")
            hits = await service.search(["cats purr"], 1)
            return hits, service.health()
        finally:
            await service.stop()

    hits, health = asyncio.run(scenario())
    assert hits[0][0].id == "d1" and health["documents"] == {"dense": 4}
