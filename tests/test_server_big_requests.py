"""Issue 22 item 9: one huge request neither starves small ones nor takes the server's memory.

A real `embedkit serve` (subprocess, tiny random BERT, 30 documents of about 1 KB) over a socket:
- a one-query request sent while a 20,000-query request is being searched is answered before the big request's
  queries have all been searched (the big one is sliced and its slices take turns with other requests);
- the answer to a sliced request is streamed and equals the answers to the same queries sent in small requests;
- a 2,000 x 30-hit answer (about 70 MB of JSON) raises the server's peak memory by far less than its own size;
- an answer estimated above `limits.max_response_bytes` gets a 413 naming the limit and how to get under it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.test_server_clients import start_server, stop_server

pytestmark = pytest.mark.slow

WORDS = "protein cell gene cancer virus study patients treatment river city film music".split()
SLICE = 64  # --max-batch-size: a request of more queries is sliced


def documents() -> list[tuple[str, str, str]]:
    return [(f"d{i}", f"{WORDS[i % len(WORDS)]} {i}", " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(160)))
            for i in range(30)]


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory) -> Path:
    from embedkit.data.corpus import Document
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import build_dense_index
    from embedkit.training.tiny import build_tiny_bert

    folder = tmp_path_factory.mktemp("big")
    model = build_tiny_bert(folder / "tiny", seed=4, hidden_size=32, layers=1)
    encoder = Encoder(EncoderConfig(model=str(model), device="cpu"))
    docs = [Document(id=i, title=title, text=text) for i, title, text in documents()]
    return Path(build_dense_index(docs, encoder, folder / "idx", quiet=True))


@pytest.fixture(scope="module")
def server(index_folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    process, url = start_server(index_folder, "--max-batch-size", str(SLICE), log=log)
    try:
        yield process, url
    finally:
        stop_server(process)


def queries(count: int, tag: str = "q") -> list[str]:
    return [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]} {tag}{i}" for i in range(count)]


def searched(url: str) -> int:
    """Queries the server has sent to search calls so far (its micro-batcher's counter)."""
    return httpx.get(url + "/info", timeout=60).json()["batching"]["stats"]["dense"]["queries"]


def test_a_small_request_is_answered_while_a_big_one_is_still_being_searched(server):
    _, url = server
    big = queries(20_000, "big")
    start = searched(url)
    finished = threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def send_big() -> None:
        outcome["big"] = httpx.post(url + "/retrieve", json={"queries": big, "topk": 3}, timeout=600)
        finished.set()

    thread = threading.Thread(target=send_big)
    thread.start()
    try:
        while searched(url) == start:  # the big request's first slices are being searched
            assert not finished.is_set(), outcome["big"].text[:300]
            time.sleep(0.01)
        small = httpx.post(url + "/retrieve", json={"queries": ["river city"], "topk": 3}, timeout=600)
        searched_then = searched(url) - start
        big_done_then = finished.is_set()
    finally:
        thread.join(timeout=600)
    assert small.status_code == 200 and len(small.json()["result"][0]) == 3
    # Behaviour, not time: when the small answer came back, most of the big request was still to be searched.
    assert not big_done_then
    assert searched_then < len(big) // 2, (searched_then, len(big))
    answer = outcome["big"]
    assert answer.status_code == 200 and len(answer.json()["result"]) == len(big)


def test_a_sliced_request_is_streamed_and_answers_like_small_requests(server):
    _, url = server
    asked = queries(1_000, "same")
    whole = httpx.post(url + "/retrieve", json={"queries": asked, "topk": 5, "return_scores": True}, timeout=600)
    assert whole.status_code == 200
    assert whole.headers.get("transfer-encoding") == "chunked"  # streamed slice by slice, never held whole
    big = whole.json()["result"]
    small = []
    with httpx.Client(timeout=600) as http:
        for start in range(0, len(asked), 7):
            part = http.post(url + "/retrieve", json={"queries": asked[start:start + 7], "topk": 5,
                                                      "return_scores": True})
            assert part.status_code == 200
            small += part.json()["result"]
    assert len(big) == len(small) == len(asked)
    for one, other in zip(big, small, strict=True):
        # Batch composition may move a score in its last float digits: compare ids, then scores closely.
        assert {hit["document"]["id"] for hit in one} == {hit["document"]["id"] for hit in other}
        scores = {hit["document"]["id"]: hit["score"] for hit in other}
        assert all(abs(hit["score"] - scores[hit["document"]["id"]]) < 1e-4 for hit in one)
        assert all(hit["document"]["contents"] for hit in one)


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_a_big_answer_raises_peak_memory_by_far_less_than_its_size(server):
    process, url = server
    asked = queries(2_000, "mem")
    httpx.post(url + "/retrieve", json={"queries": asked[:SLICE * 3], "topk": 30}, timeout=600)  # warm every path
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # peak (VmHWM) := current resident memory
    before = _status(process.pid)["VmRSS"]
    answer = httpx.post(url + "/retrieve", json={"queries": asked, "topk": 30}, timeout=600)
    assert answer.status_code == 200 and len(answer.json()["result"]) == len(asked)
    size = len(answer.content)
    growth = _status(process.pid)["VmHWM"] - before
    assert size > 50e6  # the scenario: an answer of tens of megabytes
    # Held whole (Python objects, the JSON text, its bytes) it took several times its size; streamed, a few slices.
    assert growth < size / 3, (growth, size)


def test_an_answer_over_the_byte_limit_gets_413_naming_the_limit(index_folder, tmp_path):
    process, url = start_server(index_folder, "--set", "limits.max_response_bytes=500000",
                                log=tmp_path / "serve.log")
    try:
        refused = httpx.post(url + "/retrieve", json={"queries": queries(1_000), "topk": 10}, timeout=600)
        fits = httpx.post(url + "/retrieve", json={"queries": queries(20), "topk": 10}, timeout=600)
        search = httpx.post(url + "/search", json={"queries": queries(1_000), "k": 10}, timeout=600)
    finally:
        stop_server(process)
    assert refused.status_code == 413, refused.text[:300]
    detail = refused.json()["detail"]
    for needle in ("1000 queries", "topk 10", "limits.max_response_bytes", "500000", "split the request"):
        assert needle in detail, detail
    assert fits.status_code == 200 and len(fits.json()["result"]) == 20
    assert search.status_code == 413 and "limits.max_response_bytes" in search.json()["detail"]


def test_big_requests_and_one_slice_requests_take_turns_call_by_call():
    """The batcher itself, one stream: while two 4-slice requests run, a lone query gets the next free call, and
    the big requests alternate (round-robin) instead of one finishing before the other starts."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from embedkit.server.batching import MicroBatcher
    from tests.test_server_batching import RecordingSearch

    search = RecordingSearch()  # its first call blocks until released: the others queue up meanwhile

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], max_batch_size=4)
        await batcher.start()
        first = asyncio.create_task(batcher.submit([f"a{i}" for i in range(16)], 1))
        second = asyncio.create_task(batcher.submit([f"b{i}" for i in range(16)], 1))
        await asyncio.sleep(0.05)
        small = asyncio.create_task(batcher.submit(["lone"], 1))
        await asyncio.sleep(0.05)
        search.release.set()
        answers = await asyncio.gather(first, second, small)
        await batcher.stop()
        return answers

    a, b, lone = asyncio.run(scenario())
    assert [hits[0].id for hits in a] == [f"a{i}#0" for i in range(16)] and lone[0][0].id == "lone#0"
    assert [hits[0].id for hits in b] == [f"b{i}#0" for i in range(16)]
    firsts = [call[0] for call in search.calls]  # each call's first query names its request and slice
    assert firsts[:2] == ["a0", "lone"], search.calls  # the running call, then the lone query at once
    # The big requests' slices alternate (a0 a4 a8 a12 / b0 b4 b8 b12): a, b, a, b, ...
    assert "".join(first[0] for first in firsts if first != "lone") == "abababab", search.calls
