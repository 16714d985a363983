"""Acceptance: the real RL clients against a real `embedkit serve` process on 127.0.0.1.

Each client is emulated by our own code that builds the request exactly as the client does (fields, headers,
sizes) and reads the answer exactly the way it reads it:

- Search-R1's generation loop (`search_r1/llm_agent/generation.py`, `batch_search`): one POST with the
  queries of every active rollout (train_batch_size 512 x n_agent 5 = 2,560), `topk` 3, `return_scores`
  true, no auth header; it indexes `response.json()["result"]`, and renders each hit from
  `item["document"]["contents"]`: the first line is the title, the remaining lines the text.
- verl's Search-R1-like tool (`verl/tools/utils/search_r1_like_utils.py`): `requests.post` with JSON content
  type and accept headers and a 30 s timeout, one request per tool call (a short `query_list`), retries only
  on 500/502/503/504 and connection errors, `raise_for_status()` on anything else, then
  `.get("result", [])`, each query's hits rendered as "Doc i (Title: …)\\n<text>" blocks joined by "\\n---\\n".

Every one of the 2,560 results is compared with the same index searched in-process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, write_jsonl

pytestmark = pytest.mark.slow

ANIMALS = ["otter", "heron", "badger", "lynx", "walrus", "gecko", "bison", "falcon", "marmot", "ibex",
           "puffin", "tapir", "newt", "koala", "osprey", "stoat", "yak", "lemur", "carp", "wombat"]
PLACES = ["Norway", "Peru", "Kenya", "Japan", "Chile", "Iceland", "Mongolia", "Morocco", "Nepal", "Texas",
          "Borneo", "Scotland", "Tasmania", "Alaska", "Patagonia"]
FOODS = ["beetles", "kelp", "berries", "snails", "clams", "moss", "seeds", "eels", "figs", "crickets", "lichen"]


def corpus_records() -> list[dict]:
    records = []
    for a, animal in enumerate(ANIMALS):
        for p, place in enumerate(PLACES):
            food = FOODS[(a * 7 + p) % len(FOODS)]
            records.append({"_id": f"{animal}-{place.lower()}", "title": f"{animal.title()} of {place}",
                            "text": f"The {animal} of {place} mostly eats {food} and sleeps in burrows near "
                                    f"the rivers of {place}; the {animal} is seen at dawn."})
    return records


def rollout_queries() -> list[str]:
    """2,560 queries as one Search-R1 step sends them (train_batch_size 512 x n_agent 5).

    Rollouts of one prompt often search alike, so texts repeat: 256 distinct texts, 10 copies each, shuffled.
    """
    distinct = [f"what does the {animal} in {place} eat" for animal in ANIMALS for place in PLACES][:256]
    queries = [query for query in distinct for _ in range(10)]
    random.Random(0).shuffle(queries)
    return queries


@pytest.fixture(scope="module")
def served_index(tmp_path_factory, minilm_encoder):
    from embedkit.data import iter_documents
    from embedkit.index import build_dense_index

    folder = tmp_path_factory.mktemp("clients")
    corpus = write_jsonl(folder / "corpus.jsonl", corpus_records())
    return Path(build_dense_index(iter_documents(corpus), minilm_encoder, folder / "dense", quiet=True))


def start_server(index: Path, *extra: str, log: Path | None = None,
                 log_level: str = "warning") -> tuple[subprocess.Popen, str]:
    """A real `embedkit serve` on a free port, once `/health` answers. With `log`, its output goes to that file
    (a long run's pipe that nobody reads could fill up and stall the server)."""
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "EMBEDKIT_API_KEY": ""}
    sink = open(log, "wb") if log is not None else subprocess.PIPE
    try:
        process = subprocess.Popen([sys.executable, "-m", "embedkit", "serve", str(index), "--port", str(port),
                                    "--device", "cpu", "--torch-threads", "1", "--log-level", log_level, *extra],
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            sink.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text() if log is not None else process.stdout.read().decode()
            raise RuntimeError(f"embedkit serve exited {process.returncode}: {output[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError("embedkit serve did not come up in 300 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(served_index):
    process, url = start_server(served_index)
    try:
        yield url
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def reference(served_index, minilm_encoder):
    """The same index searched in-process: query text -> its top-4 passages (the 4th tells ties at rank 3)."""
    from embedkit.index import Index

    index = Index.load(served_index, encoder=minilm_encoder)
    distinct = sorted(set(rollout_queries()))
    return dict(zip(distinct, index.search(distinct, 4), strict=True))


def split_contents(contents: str) -> tuple[str, str]:
    """How both clients read a hit: title = the first line of `contents`, text = every line after it."""
    title, _, text = contents.partition("\n")
    return title, text


def assert_same_hits(served: list[str], scores: list[float] | None, expected, query: str) -> None:
    """The in-process top 3, in order, with the same scores; only a score tie (< 1e-4) may swap two ids."""
    assert len(served) == 3, query
    for position, doc_id in enumerate(served):
        hit = expected[position]
        if scores is not None:
            assert scores[position] == pytest.approx(hit.score, abs=1e-4), (query, position)
        tied = [other.id for other in expected if other is not hit and abs(other.score - hit.score) < 1e-4]
        assert doc_id == hit.id or doc_id in tied, (query, position, doc_id, hit.id)


def test_search_r1_generation_loop_batch(server, reference):
    requests = pytest.importorskip("requests")
    queries = rollout_queries()
    assert len(queries) == 2560
    # Search-R1's _batch_search: the payload, posted as JSON with requests' defaults (no auth, no extra headers).
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    response = requests.post(server + "/retrieve", json=payload, timeout=900)
    assert response.status_code == 200, response.text[:500]
    results = response.json()["result"]  # what batch_search indexes; a KeyError here is what killed training
    assert len(results) == len(queries)
    documents = {record["_id"]: record for record in corpus_records()}
    for query, hits in zip(queries, results, strict=True):
        expected = reference[query]
        served, scores = [], []
        rendered = ""
        for number, item in enumerate(hits, start=1):
            assert set(item) == {"document", "score"} and isinstance(item["score"], float)
            title, text = split_contents(item["document"]["contents"])
            rendered += f"Doc {number}(Title: {title}) {text}\n"  # the observation the policy reads
            served.append(item["document"]["id"])
            scores.append(item["score"])
            stored = documents[item["document"]["id"]]
            assert (title, text) == (stored["title"], stored["text"])
        assert_same_hits(served, scores, expected, query)
        assert rendered.count("Doc ") == 3 and rendered.startswith("Doc 1(Title: ")
    # The server split the request into encoder batches and searched each distinct text once.
    info = httpx.get(server + "/info", timeout=30).json()
    assert info["batching"]["stats"]["dense"]["largest_call"] <= info["batching"]["max_batch_size"]


def verl_search(url: str, query_list: list[str], topk: int = 3) -> tuple[str, dict]:
    """verl's Search-R1-like tool, written from its behaviour: (result JSON text, metadata)."""
    import requests

    payload = {"queries": query_list, "topk": topk, "return_scores": True}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    error = None
    answer = None
    for attempt in range(10):
        try:
            response = requests.post(url, headers=headers, json=payload, timeout=30)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as problem:
            error = str(problem)
            time.sleep(0.1 * (attempt + 1))
            continue
        if response.status_code in (500, 502, 503, 504):
            error = f"server error {response.status_code}"
            time.sleep(0.1 * (attempt + 1))
            continue
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as problem:
            error = str(problem)
            break
        answer, error = response.json(), None
        break
    if error is not None or not answer:
        return json.dumps({"result": f"Search error: {error}"}, ensure_ascii=False), {"status": "api_error"}
    blocks, total = [], 0
    for hits in answer.get("result", []):
        parts = []
        for number, item in enumerate(hits, start=1):
            title, text = split_contents(item["document"]["contents"])
            parts.append(f"Doc {number} (Title: {title})\n{text}")
        blocks.append("\n\n".join(parts))
        total += len(hits)
    text = "\n---\n".join(blocks)
    return json.dumps({"result": text}, ensure_ascii=False), {"status": "success", "total_results": total}


def test_verl_search_tool_calls_in_parallel(server, reference):
    pytest.importorskip("requests")
    queries = sorted(reference)
    # One tool call per rollout turn, many in flight at once, each with a short query_list.
    calls = [queries[i:i + 1 + i % 3] for i in range(0, 192, 3)]

    def call(query_list):
        return query_list, *verl_search(server + "/retrieve", query_list)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, calls))
    ids_by_title = {record["title"]: record["_id"] for record in corpus_records()}
    texts = {record["_id"]: record["text"] for record in corpus_records()}
    for query_list, text, metadata in answers:
        assert metadata == {"status": "success", "total_results": 3 * len(query_list)}, text
        blocks = json.loads(text)["result"].split("\n---\n")
        assert len(blocks) == len(query_list)
        for query, block in zip(query_list, blocks, strict=True):
            docs = block.split("\n\n")
            assert len(docs) == 3
            served = []
            for number, doc in enumerate(docs, start=1):
                head, _, body = doc.partition("\n")
                prefix = f"Doc {number} (Title: "
                assert head.startswith(prefix) and head.endswith(")"), doc
                doc_id = ids_by_title[head[len(prefix):-1]]
                assert body == texts[doc_id]
                served.append(doc_id)
            assert_same_hits(served, None, reference[query], query)


def test_verl_client_gets_a_final_4xx_not_retries_for_a_bad_request(server):
    pytest.importorskip("requests")
    # A query longer than limits.max_query_chars: a 413, which verl treats as final (raise_for_status).
    text, metadata = verl_search(server + "/retrieve", ["x" * 5000])
    assert metadata["status"] == "api_error" and "413" in json.loads(text)["result"]
