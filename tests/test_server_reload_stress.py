"""Issue 22 item 4: a hot reload never mixes two states of an index folder.

A real `embedkit serve` (subprocess) serves a dense index of 20 fixed documents while another process
alternates two sets of 10 more (add one set, remove the other), each round with a new generation number in
their titles. Four clients ask for every document (k=100, Search-R1's `/retrieve`) every 0.05 s, and a fifth
sends requests of 150 queries, which the server searches in slices of 32. Every answer must be wholly one
committed state (the 20 fixed documents plus exactly the upserted ones of one state the writer committed),
all 150 answers of a sliced request the same state, and the server must never log that the index is damaged
(it was only changing). The updates make the folder segmented (issue 24): its first update converts it in
place into segment 0, every later one adds a segment or a deletion file, so the server's reloads must keep
segment 0 opened as it was in every reload, and still never mix two states.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.test_server_clients import start_server, stop_server

pytestmark = pytest.mark.slow

BASE = 20
UPSERTED = 10
CLIENTS = 4
SLICED_QUERIES = 150  # with --max-batch-size 32: five slices, searched in several calls
POLL_S = 0.05
DURATION_S = 20.0

# The writer: alternate two sets of 10 documents (u*, v*) with a new generation in their titles each round: add
# one set (40 documents), then remove the other (30). It prints every state it commits as {id: title} of the
# upserted documents, so the test can tell which state each answer came from.
WRITER = """
import json, sys, time
from embedkit.data.corpus import Document
from embedkit.index.lifecycle import add_documents, encoder_for, remove_documents

path, seconds, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
encoder = encoder_for(path, device="cpu")
state = {f"u{i}": "gen 0" for i in range(count)}
generation, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    generation += 1
    new, old = ("v", "u") if generation % 2 else ("u", "v")
    words = "river delta flood plain" if new == "u" else "mountain glacier snow ridge"
    docs = [Document(id=f"{new}{i}", title=f"gen {generation}", text=f"{words} {i}") for i in range(count)]
    add_documents(path, docs, encoder=encoder)
    state.update({doc.id: doc.title for doc in docs})
    print(json.dumps(state), flush=True)
    remove_documents(path, [f"{old}{i}" for i in range(count)])
    state = {key: value for key, value in state.items() if not key.startswith(old)}
    print(json.dumps(state), flush=True)
"""


def base_docs() -> list[dict]:
    words = "protein cell gene cancer virus study patients treatment river city film music".split()
    return [{"_id": f"b{i}", "title": words[i % len(words)],
             "text": " ".join(words[(i + j) % len(words)] for j in range(8))} for i in range(BASE)]


@pytest.fixture
def index_folder(tmp_path) -> Path:
    from embedkit.data.corpus import Document
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import build_dense_index
    from embedkit.training.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path / "tiny", seed=3, hidden_size=32, layers=1)
    documents = [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in base_docs()]
    documents += [Document(id=f"u{i}", title="gen 0", text=f"river delta flood plain {i}") for i in range(UPSERTED)]
    encoder = Encoder(EncoderConfig(model=str(model), device="cpu"))
    return Path(build_dense_index(documents, encoder, tmp_path / "idx", quiet=True))


def state_of(answer: list[dict], committed: set[str]) -> str | None:
    """The committed state an answer shows ({id: title} of its upserted documents, as JSON), else None."""
    ids = [hit["id"] for hit in answer]
    upserted = {hit["id"]: hit["contents"].partition("\n")[0] for hit in answer if not hit["id"].startswith("b")}
    state = json.dumps(dict(sorted(upserted.items())))
    whole = len(ids) == len(set(ids)) == BASE + len(upserted) and {f"b{i}" for i in range(BASE)} <= set(ids)
    return state if whole and state in committed else None


def test_every_answer_during_continuous_upserts_is_one_whole_state(index_folder, tmp_path):
    log = tmp_path / "serve.log"
    process, url = start_server(index_folder, "--set", "reload.poll_seconds=0.05", "--max-batch-size", "32",
                                log=log, log_level="info")
    answers: list[tuple[int, list[dict] | str]] = []
    sliced: list[tuple[int, list[list[dict]] | str]] = []
    done = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                response = http.post(url + "/retrieve", json={"queries": [f"river flood {number}"], "topk": 100})
                answers.append((response.status_code, response.json()["result"][0] if response.status_code == 200
                                else response.text))
                time.sleep(POLL_S)

    def sliced_client() -> None:
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                response = http.post(url + "/retrieve", json={"queries": [f"delta snow {i}" for i in
                                                                          range(SLICED_QUERIES)], "topk": 100})
                sliced.append((response.status_code, response.json()["result"] if response.status_code == 200
                               else response.text))

    try:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(index_folder), str(DURATION_S), str(UPSERTED)],
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        threads.append(threading.Thread(target=sliced_client))
        for thread in threads:
            thread.start()
        try:
            out, err = writer.communicate(timeout=DURATION_S + 300)
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=120)
        assert writer.returncode == 0, err
        info = httpx.get(url + "/info", timeout=30).json()
        health = httpx.get(url + "/health", timeout=30).json()
    finally:
        stop_server(process)

    initial = json.dumps({f"u{i}": "gen 0" for i in range(UPSERTED)})
    committed = {initial, *(json.dumps(dict(sorted(json.loads(line).items()))) for line in out.split("\n") if line)}
    served = log.read_text(errors="replace")
    found = [(status, answer, state_of(answer, committed) if status == 200 else None) for status, answer in answers]
    bad = [(status, answer) for status, answer, state in found if state is None]
    seen = {state for _, _, state in found} - {None}
    damaged = [line for line in served.splitlines() if "damaged" in line]
    # A sliced request's answers all come from the one state the server was serving when it came in.
    mixed = [result if status != 200 else [state_of(one, committed) for one in result]
             for status, result in sliced if status != 200 or len({state_of(one, committed) for one in result}) != 1
             or state_of(result[0], committed) is None]
    # The scenario really ran: many updates, many reloads, many answers, more than one state served.
    assert len(committed) >= 20, (len(committed), err[-2000:])
    assert info["reload"]["reloads"] >= 5 and len(answers) >= 100 and len(seen) >= 3, (info["reload"], len(answers))
    assert not bad, (f"{len(bad)} of {len(answers)} answers were not one whole committed state", bad[:3])
    assert not damaged, damaged[:5]
    assert len(sliced) >= 5 and not mixed, (len(sliced), mixed[:2])
    # Segment 0 (the 20 fixed documents) is never rewritten: every reload kept it, whole or with a new deletion
    # file, instead of reading the folder again.
    assert json.loads((index_folder / "manifest.json").read_text())["segments"]
    reused = info["reload"]["segments"]
    assert reused["kept"] + reused["refreshed"] >= info["reload"]["reloads"], info["reload"]
    last = health["indexes"]["dense"]["segments"]  # how the last reload got its segments, as /health says
    assert set(last) == {"kept", "refreshed", "read"} and sum(last.values()) >= 1, last
