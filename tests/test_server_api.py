"""The real server (uvicorn on a free local port): Search-R1's /retrieve wire format, auth, limits, bad input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, running_server

pytestmark = pytest.mark.slow  # a real uvicorn server

DOCS = [
    {"_id": "d1", "title": "Cats", "text": "Cats are small domesticated felines that purr and hunt mice."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs are loyal companions that bark and love to play fetch."},
    {"_id": "d3", "title": "FAISS", "text": "FAISS is a library for fast similarity search over dense vectors."},
    {"_id": "d4", "title": "Volcano", "text": "A volcano erupts when molten rock rises through the crust."},
    {"_id": "d5", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast."},
    {"_id": "d6", "title": "Python", "text": "Python is a programming language with readable syntax."},
    {"_id": "d7", "title": "Kittens", "text": "Kittens are young cats; they purr, play and sleep a lot."},
    {"_id": "d8", "title": "", "text": "Lava flows from an erupting volcano and cools into basalt."},
]


def write_corpus(folder: Path) -> Path:
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    return path


def build_indexes(folder: Path, encoder) -> tuple[Path, Path]:
    from embedkit.data import iter_documents
    from embedkit.index import build_dense_index
    from embedkit.lexical import BM25Settings, build_bm25_index

    corpus = write_corpus(folder)
    dense = build_dense_index(iter_documents(corpus), encoder, folder / "dense", quiet=True)
    bm25 = build_bm25_index(iter_documents(corpus), folder / "bm25", BM25Settings(backend="bm25s"))
    return Path(dense), Path(bm25)


KEY = "test-secret-key"
BODY_LIMIT = 64 * 1024
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, minilm_encoder):
    return build_indexes(tmp_path_factory.mktemp("server-indexes"), minilm_encoder)


@pytest.fixture(scope="module")
def server(indexes, minilm_encoder):
    from embedkit.index import Index
    from embedkit.server.app import create_app
    from embedkit.server.config import BatchingConfig, Limits, ServerConfig
    from embedkit.server.service import RetrievalService

    dense, bm25 = indexes
    config = ServerConfig(index=str(dense), bm25=str(bm25), api_key=KEY,
                          limits=Limits(max_topk=5, max_queries=4, max_query_chars=200, max_body_bytes=BODY_LIMIT),
                          batching=BatchingConfig(max_batch_size=64, max_wait_ms=5), search_streams=2)
    service = RetrievalService(config, {"dense": Index.load(dense, encoder=minilm_encoder), "bm25": Index.load(bm25)})
    with running_server(create_app(config, service), lifespan="on") as url:
        yield url


def post(server: str, path: str, payload=None, *, content: bytes | None = None, headers=None) -> httpx.Response:
    headers = {**AUTH, **(headers or {})}
    if content is not None:
        headers.setdefault("content-type", "application/json")
        return httpx.post(server + path, content=content, headers=headers, timeout=60)
    return httpx.post(server + path, json=payload, headers=headers, timeout=60)


def test_retrieve_with_scores_matches_search_r1_wire_format(server):
    response = post(server, "/retrieve", {"queries": ["cats that purr", "erupting volcano"], "topk": 3,
                                          "return_scores": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    # Field names and nesting exactly as Search-R1's server writes them.
    assert response.content.startswith(b'{"result":[[{"document":{"id":"')
    body = response.json()
    assert list(body) == ["result"]
    assert len(body["result"]) == 2 and all(len(hits) == 3 for hits in body["result"])
    for hits in body["result"]:
        for item in hits:
            assert list(item) == ["document", "score"]
            assert list(item["document"]) == ["id", "contents"]
            assert isinstance(item["score"], float)
        scores = [item["score"] for item in hits]
        assert scores == sorted(scores, reverse=True)
    first = body["result"][0][0]["document"]
    assert first["id"] in {"d1", "d7"}
    title = {"d1": "Cats", "d7": "Kittens"}[first["id"]]
    assert first["contents"].startswith(title + "\n") and "purr" in first["contents"]
    assert body["result"][1][0]["document"]["id"] in {"d4", "d8"}
    untitled = next(item["document"] for hits in body["result"] for item in hits if item["document"]["id"] == "d8")
    assert untitled["contents"].startswith("Lava flows")  # no title: no leading newline


def test_retrieve_without_scores_returns_plain_documents(server):
    body = post(server, "/retrieve", {"queries": ["bread baking"], "topk": 2, "return_scores": False}).json()
    assert [list(doc) for doc in body["result"][0]] == [["id", "contents"], ["id", "contents"]]
    assert body["result"][0][0]["id"] == "d5"


def test_retrieve_defaults_topk_to_three_and_accepts_empty_batches(server):
    for payload in ({"queries": ["python syntax"]}, {"queries": ["python syntax"], "topk": None},
                    {"queries": ["python syntax"], "topk": 0}):  # Search-R1 reads a falsy topk as "default"
        body = post(server, "/retrieve", payload).json()
        assert len(body["result"][0]) == 3 and list(body["result"][0][0]) == ["id", "contents"]
    assert post(server, "/retrieve", {"queries": []}).json() == {"result": []}


def test_auth_is_required_with_a_key(server):
    payload = {"queries": ["cats"], "topk": 1}
    missing = httpx.post(server + "/retrieve", json=payload, timeout=30)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "API key" in missing.json()["detail"]
    wrong = httpx.post(server + "/retrieve", json=payload, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    assert httpx.get(server + "/info", timeout=30).status_code == 401
    assert httpx.get(server + "/health", timeout=30).status_code == 200  # liveness probes need no key
    assert post(server, "/retrieve", payload).status_code == 200


@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"queries": ["cats"], "topk": 6}, 422, "between 1 and 5"),
    ({"queries": ["cats"], "topk": -1}, 422, "between 1 and 5"),
    ({"queries": ["q"] * 5, "topk": 1}, 413, "limit is 4"),
    ({"queries": ["x" * 201], "topk": 1}, 413, "limit is 200"),
])
def test_limits_answer_4xx_with_a_clear_message(server, payload, status, message):
    response = post(server, "/retrieve", payload)
    assert response.status_code == status
    assert message in response.json()["detail"]


@pytest.mark.parametrize("content", [
    b'{"queries": ["cats"', b"not json", b"", b"[]", b'{"queries": "cats"}', b'{"queries": [1, 2]}',
    b'{"topk": 3}', b'{"queries": ["cats"], "topk": "three"}', b'{"queries": ["cats"], "topk": 2.5}',
    b'{"queries": ["\\ud800"]}', b'{"queries": null}',
    # strict types: no silent conversion of strings, floats or booleans
    b'{"queries": ["cats"], "topk": "3"}', b'{"queries": ["cats"], "topk": 3.0}', b'{"queries": ["cats"], "topk": true}',
    b'{"queries": ["cats"], "return_scores": "yes"}', b'{"queries": ["cats"], "return_scores": 1}',
    # bodies JSON cannot parse for reasons other than syntax: invalid UTF-8, nesting deeper than the parser goes
    b'{"queries": ["caf\xe9"]}', b'{"queries": ["\xff\xfe"]}', b'{"queries": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
])
def test_malformed_requests_get_422_not_500(server, content):
    response = post(server, "/retrieve", content=content)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_search_modes_and_id_filters(server):
    for mode in ("dense", "bm25", "hybrid"):
        body = post(server, "/search", {"queries": ["volcano lava"], "mode": mode, "k": 2}).json()
        assert body["mode"] == mode
        hits = body["results"][0]
        assert {hit["id"] for hit in hits} == {"d4", "d8"}, (mode, hits)
        assert [hit["rank"] for hit in hits] == [1, 2] and set(hits[0]) == {"id", "title", "text", "score", "rank"}
    excluded = post(server, "/search", {"queries": ["volcano lava"], "k": 2, "exclude_ids": ["d8"]}).json()
    assert "d8" not in [hit["id"] for hit in excluded["results"][0]]
    included = post(server, "/search", {"queries": ["volcano lava"], "k": 3, "include_ids": ["d2", "d5"]}).json()
    assert {hit["id"] for hit in included["results"][0]} <= {"d2", "d5"}
    fused = post(server, "/search", {"queries": ["kittens"], "mode": "hybrid", "k": 1,
                                     "fusion": {"method": "interpolate", "alpha": 0.5}}).json()
    assert fused["results"][0][0]["id"] == "d7"
    bad = post(server, "/search", {"queries": ["x"], "mode": "sparse"})
    assert bad.status_code == 422


def test_info_and_health(server):
    info = httpx.get(server + "/info", headers=AUTH, timeout=30).json()
    assert info["modes"] == ["dense", "bm25", "hybrid"] and info["retrieve_mode"] == "dense"
    assert info["indexes"]["dense"]["manifest"]["kind"] == "dense"
    assert info["indexes"]["bm25"]["manifest"]["kind"] == "bm25"
    assert info["limits"]["max_topk"] == 5 and info["auth"] is True
    assert (info["encoder_backend"], info["torch_threads"]) == ("torch", None)  # each field has one type
    assert info["threads_per_call"].endswith("/ calls sharing them")
    health = httpx.get(server + "/health", timeout=30).json()
    assert (health["status"], health["modes"]) == ("ok", ["dense", "bm25", "hybrid"])
    assert health["documents"] == {"dense": 8, "bm25": 8}
    for kind in ("dense", "bm25"):
        served = health["indexes"][kind]
        assert served["documents"] == 8 and len(served["version"]) == 16 and served["path"].endswith(kind)
    schema = httpx.get(server + "/openapi.json", timeout=30).json()
    assert {"/retrieve", "/search", "/health", "/info"} <= set(schema["paths"])


def test_concurrent_requests_each_get_their_own_answers(server):
    queries = {"cats purr": {"d1", "d7"}, "dogs fetch": {"d2"}, "vector similarity search library": {"d3"},
               "bread yeast flour": {"d5"}, "programming language syntax": {"d6"}, "lava basalt": {"d8", "d4"}}
    jobs = list(queries.items()) * 4

    def ask(item):
        query, expected = item
        body = post(server, "/retrieve", {"queries": [query], "topk": 1, "return_scores": True}).json()
        return body["result"][0][0]["document"]["id"] in expected

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert all(pool.map(ask, jobs))
    stats = httpx.get(server + "/info", headers=AUTH, timeout=30).json()["batching"]["stats"]["dense"]
    assert stats["requests"] >= len(jobs) and stats["calls"] <= stats["requests"]


def test_http_retriever_matches_in_process_retriever(server, indexes, minilm_encoder):
    from agents.http_retriever import HttpRetriever, RetrievalClient, RetrievalError
    from agents.retrieval import IndexRetriever, Retriever
    from embedkit.index import Index

    remote = HttpRetriever(server + "/retrieve", api_key=KEY, timeout=30, retries=0)
    local = IndexRetriever(Index.load(indexes[0], encoder=minilm_encoder))
    assert isinstance(remote, Retriever)
    questions = ["young cats", "bread baking"]
    got, want = remote.retrieve(questions, k=3), local.retrieve(questions, k=3)
    assert [[p.id for p in hits] for hits in got] == [[p.id for p in hits] for hits in want]
    assert got[0][0].title == want[0][0].title and got[0][0].text == want[0][0].text
    assert got[0][0].score == pytest.approx(want[0][0].score, rel=1e-5)
    with pytest.raises(RetrievalError) as refused:
        HttpRetriever(server, api_key="wrong", retries=3, backoff=5).retrieve(["x"])  # 401: not retried
    assert refused.value.status == 401
    with RetrievalClient(server, api_key=KEY) as client:
        assert client.search(["dogs"], k=1, mode="bm25")[0][0]["id"] == "d2"
        assert client.health()["status"] == "ok"


def test_http_retriever_retries_transport_failures_then_gives_up():
    from agents.http_retriever import HttpRetriever, RetrievalError

    retriever = HttpRetriever(f"http://127.0.0.1:{free_port()}", timeout=2, retries=2, backoff=0.01)
    with pytest.raises(RetrievalError, match="after 3 attempts"):
        retriever.retrieve(["anything"])


def test_http_retriever_retries_503_and_succeeds():
    from agents.http_retriever import HttpRetriever

    answers = iter([httpx.Response(503, json={"detail": "busy"}),
                    httpx.Response(200, json={"result": [[{"document": {"id": "7", "contents": "T\nbody"},
                                                           "score": 1.5}]]})])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return next(answers)

    from agents.http_retriever import RetrievalClient

    client = RetrievalClient("http://retriever", retries=2, backoff=0.01, transport=httpx.MockTransport(handler))
    passages = HttpRetriever("unused", client=client).retrieve(["q"], k=1)
    assert seen[0] == {"queries": ["q"], "topk": 1, "return_scores": True} and len(seen) == 2
    assert passages[0][0].id == "7" and passages[0][0].title == "T" and passages[0][0].text == "body"


def test_strict_types_in_search_requests(server):
    for payload in ({"queries": ["cats"], "k": "2"}, {"queries": ["cats"], "k": 2.0}, {"queries": ["cats"], "k": True},
                    {"queries": ["cats"], "mode": "hybrid", "fusion": {"method": "rrf", "rrf_k": "60"}},
                    {"queries": ["cats"], "include_ids": [1, 2]}):
        response = post(server, "/search", payload)
        assert response.status_code == 422, (payload, response.text)


def test_fusion_methods_in_the_schema_come_from_the_registry(indexes, minilm_encoder):
    from embedkit.hybrid import fusion
    from embedkit.index import Index
    from embedkit.server.app import create_app
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    def first_system_only(systems, config):
        return dict(systems[0])

    registry = fusion.FUSION_METHODS
    if hasattr(registry, "add"):  # embedkit.registry.Registry
        registry.add("first_only_test", first_system_only)
    else:
        fusion.register_fusion("first_only_test")(first_system_only)
    try:
        dense, bm25 = indexes
        config = ServerConfig(index=str(dense), bm25=str(bm25), reload={"enabled": False})
        service = RetrievalService(config, {"dense": Index.load(dense, encoder=minilm_encoder),
                                            "bm25": Index.load(bm25)})
        with running_server(create_app(config, service), lifespan="on") as url:
            schema = httpx.get(url + "/openapi.json", timeout=30).json()
            methods = schema["components"]["schemas"]["FusionRequest"]["properties"]["method"]["enum"]
            assert "first_only_test" in methods and {"rrf", "interpolate"} <= set(methods)
            body = httpx.post(url + "/search", json={"queries": ["kittens"], "mode": "hybrid", "k": 1,
                                                     "fusion": {"method": "first_only_test"}}, timeout=60)
            assert body.status_code == 200, body.text
            assert body.json()["results"][0][0]["id"] == "d7"  # the dense ranking, as the method says
            refused = httpx.post(url + "/search", json={"queries": ["x"], "mode": "hybrid",
                                                        "fusion": {"method": "no_such_method"}}, timeout=60)
            assert refused.status_code == 422
    finally:
        entries = getattr(registry, "_entries", registry)
        entries.pop("first_only_test", None)


# --- the body guard: auth before the body, the size limit counted while the body arrives -------------


def _raw_request(server: str, head: str, chunks=(), *, pause: float = 0.0) -> tuple[int, int]:
    """Send a request by hand; returns (status, body bytes sent before the server answered)."""
    import select
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], pause)
            if readable:
                break  # the server answered before the whole body was sent
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        deadline = time.monotonic() + 60
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), sent


def _chunked(total: int, size: int = 16 * 1024):
    piece = b"[" + b'"x",' * (size // 4 - 1)
    body = piece[:size]
    for _ in range(total // size):
        yield f"{len(body):x}\r\n".encode() + body + b"\r\n"


def test_chunked_body_over_the_limit_is_refused_while_it_arrives(server):
    host = server.removeprefix("http://")
    head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    total = 200 * 1024 * 1024  # 200 MB offered; the server must stop after about BODY_LIMIT
    status, sent = _raw_request(server, head, _chunked(total), pause=0.002)
    assert status == 413
    assert sent < 64 * BODY_LIMIT, f"the client got to send {sent} bytes"
    assert httpx.get(server + "/health", timeout=30).status_code == 200  # and the server is fine


def test_chunked_body_without_a_key_gets_401_before_the_body_is_read(server):
    host = server.removeprefix("http://")
    for auth in ("", "Authorization: Bearer wrong\r\n"):
        head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")
        status, sent = _raw_request(server, head, _chunked(200 * 1024 * 1024), pause=0.002)
        assert status == 401 and sent < 64 * BODY_LIMIT
        # a declared length is not waited for either
        head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
                "Content-Length: 400000000\r\n\r\n")
        assert _raw_request(server, head)[0] == 401


def test_declared_oversized_body_gets_413_without_reading_it(server):
    host = server.removeprefix("http://")
    head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {400 * 1024 * 1024}\r\n\r\n")
    assert _raw_request(server, head)[0] == 413
    too_big = json.dumps({"queries": ["cats"] * 2, "topk": 1, "pad": "x" * BODY_LIMIT}).encode()
    response = post(server, "/retrieve", content=too_big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_chunked_body_within_the_limit_is_served(server):
    def body():
        yield b'{"queries": ["cats that purr",'
        yield b' "erupting volcano"], "topk": 2, "return_scores": true}'

    response = httpx.post(server + "/retrieve", content=body(), headers={**AUTH, "content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert [len(hits) for hits in response.json()["result"]] == [2, 2]


# --- fuzzing from the OpenAPI schema: whatever schemathesis sends, the answer is never a 5xx -------------


def test_fuzz_api_from_openapi_schema_finds_no_server_error(server):
    """Positive and negative cases for every operation, generated by schemathesis from /openapi.json."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/retrieve", "/search", "/health", "/info"}
    calls: list[int] = []
    for operation in operations:
        for mode in schemathesis.GenerationMode:
            if mode.name == "NEGATIVE" and operation.method.upper() == "GET":
                continue  # no parameters, so nothing can be made invalid
            checks = [not_a_server_error] + ([response_schema_conformance] if mode.name == "POSITIVE" else [])
            _fuzzer(operation.as_strategy(generation_mode=mode), checks, calls, given, settings, HealthCheck)()
    assert calls and all(status < 500 for status in calls)


def _fuzzer(strategy, checks, calls, given, settings, health_check):
    @given(case=strategy)
    @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(health_check))
    def fuzz(case):
        calls.append(case.call_and_validate(headers=AUTH, checks=checks, timeout=60).status_code)

    return fuzz


def test_backends_torch_and_mmap_serve_the_same_hits_and_faiss_gpu_needs_a_gpu(indexes, minilm_encoder):
    import asyncio

    from embedkit.errors import EmbedkitError
    from embedkit.index import Index
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService, open_index

    dense = indexes[0]
    loaded = Index.load(dense, encoder=minilm_encoder)  # its encoder is reused by open_index
    queries = ["cats that purr", "erupting volcano", "bread yeast", "python syntax"]
    want = [[(h.id, round(h.score, 4)) for h in hits] for hits in loaded.search(queries, 3)]
    for options in ({"backend": "torch", "device": "cpu"}, {"mmap": True}, {"backend": "torch", "mmap": True}):
        config = ServerConfig(index=str(dense), reload={"enabled": False}, **options)
        service = RetrievalService(config, {"dense": open_index(dense, config, loaded)})

        async def scenario(service=service):
            await service.start()
            try:
                return await service.search(queries, 3)
            finally:
                await service.stop()

        got = [[(h.id, round(h.score, 4)) for h in hits] for hits in asyncio.run(scenario())]
        assert got == want, options
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        with pytest.raises(EmbedkitError, match="faiss-gpu"):
            open_index(dense, ServerConfig(index=str(dense), backend="faiss-gpu"), loaded)


def test_search_threads_give_a_lone_call_every_core(indexes, minilm_encoder):
    """Stream 0 takes CPUs / calls sharing them (torch and FAISS alike); other streams take CPUs / streams."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import faiss
    import torch

    from embedkit.index import Index
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    service = RetrievalService(ServerConfig(search_streams=2, device="cpu"),
                               {"dense": Index.load(indexes[0], encoder=minilm_encoder)})
    cpus = os.cpu_count() or 1

    def sized(stream, sharing):
        service._size_threads(stream, sharing)
        return torch.get_num_threads(), faiss.omp_get_max_threads()

    with ThreadPoolExecutor(1) as thread:  # a thread of its own, like a search stream: the settings are per thread
        assert thread.submit(sized, 0, 1).result() == (cpus, cpus)
        assert thread.submit(sized, 0, 2).result() == (max(1, cpus // 2),) * 2
        assert thread.submit(sized, 1, 1).result() == (max(1, cpus // 2),) * 2
    fixed = RetrievalService(ServerConfig(search_streams=2, torch_threads=1, device="cpu"),
                             {"dense": Index.load(indexes[0], encoder=minilm_encoder)})
    with ThreadPoolExecutor(1) as thread:
        assert thread.submit(lambda: (fixed._size_threads(0, 1), torch.get_num_threads())[1]).result() == 1


def test_the_onnx_encoder_backend_is_served_as_cpu_encoding(indexes, minilm_encoder):
    """A GPU device means one large-batch stream, unless the onnx backend encodes on the CPU anyway."""
    import os

    from embedkit.index import Index
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    def service(**settings):
        return RetrievalService(ServerConfig(device="cuda", **settings),
                                {"dense": Index.load(indexes[0], encoder=minilm_encoder)})

    assert service().streams == 1 and service().batchers["dense"].before_call is None
    onnx = service(encoder_backend="onnx")
    assert onnx.streams == max(1, min(4, os.cpu_count() or 1))
    assert onnx.batchers["dense"].before_call == onnx._size_threads
