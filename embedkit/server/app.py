"""The FastAPI application: routes, bearer-token auth, request limits and error mapping.

Status codes: 401 missing/wrong token (checked before the body is read); 413 a body larger than
`limits.max_body_bytes` (counted while it arrives, chunked bodies included, so an oversized body is never
held in memory), more queries than `limits.max_queries` (default 100,000), a query too long, or an answer
that would exceed `limits.max_response_bytes` (queries x hits x the index's mean document size, estimated
before searching); 422
malformed JSON (including invalid UTF-8 and nesting too deep to parse), wrong types (strict: `"3"`, `3.0`
and `true` are not integers) or an out-of-range value (topk, k); 400 a request the indexes cannot serve
(e.g. hybrid mode without a BM25 index). A bug would be a 500; the fuzz test checks there are none.

Answers of more than one slice (`batching.max_batch_size` queries) are streamed: each slice's hits are
written out as JSON once searched and then dropped, so the server never holds a big answer whole, and the
heap pages it used are handed back afterwards (`embedkit.server.memory`).
"""

import contextlib
import json
import logging
import math
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from embedkit.errors import EmbedkitError
from embedkit.hybrid.fusion import FusionConfig
from embedkit.passage import Passage
from embedkit.server.config import Mode, ServerConfig
from embedkit.server.memory import release_memory
from embedkit.server.schemas import (
    ErrorResponse,
    HealthResponse,
    RetrieveRequest,
    RetrieveResponse,
    SearchResponse,
    search_request_model,
)
from embedkit.server.service import RetrievalService

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the request cannot be served by this server's indexes"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "too many queries, a query too long, a body too large, or an "
                                                 "answer that would be too large"},
    422: {"model": ErrorResponse, "description": "malformed JSON, wrong types, or a value out of range"},
}

#: Paths that answer without an API key: liveness probes and the API's own documentation.
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def fusion_method_names() -> tuple[str, ...]:
    """Names in the fusion registry (a plain dict or an `embedkit.registry.Registry`: both iterate over names)."""
    from embedkit.hybrid import fusion

    return tuple(sorted(fusion.FUSION_METHODS))


def create_app(config: ServerConfig, service: RetrievalService | None = None) -> FastAPI:
    """The ASGI app. `service` defaults to one opening the indexes named in `config`."""
    service = service or RetrievalService.from_config(config)
    limits = config.limits
    api_key = config.resolved_api_key()
    # Auth is RequestGuard's (before the body is read); routes only declare it in the OpenAPI schema, which
    # also spares every request FastAPI's dependency resolution.
    secured: dict[str, Any] | None = {"security": [{"HTTPBearer": []}]} if api_key is not None else None
    SearchRequest = search_request_model(fusion_method_names())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="embedkit retrieval server",
        version=_version(),
        description="Dense, BM25 and hybrid retrieval. `POST /retrieve` speaks Search-R1's protocol, so "
                    "Search-R1 and verl search tools can point at this server unchanged.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input back, and an input holding a lone surrogate ("\ud800")
        # cannot be encoded as UTF-8: that would be a 500. Report where and what, ASCII-escaped.
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in error.errors()]
        body = json.dumps({"detail": problems}, ensure_ascii=True, default=str)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(EmbedkitError)
    async def user_error(_request: Request, error: EmbedkitError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    def check_queries(queries: list[str]) -> None:
        if len(queries) > limits.max_queries:
            raise HTTPException(413, f"{len(queries)} queries in one request; this server's limit is "
                                     f"{limits.max_queries} (split the request, or raise limits.max_queries)")
        for position, query in enumerate(queries):
            if len(query) > limits.max_query_chars:
                raise HTTPException(413, f"query {position} has {len(query)} characters; this server's limit is "
                                         f"{limits.max_query_chars}")

    def check_k(name: str, value: int) -> None:
        if not 1 <= value <= limits.max_topk:
            raise HTTPException(422, f"{name} must be between 1 and {limits.max_topk} (this server's limit), got {value}")

    def check_answer_size(queries: int, name: str, k: int, mode: Mode | None = None) -> None:
        estimate = service.response_bytes(queries, k, mode)
        if estimate > limits.max_response_bytes:
            raise HTTPException(413, f"the answer to {queries} queries x {name} {k} would be about "
                                     f"{_megabytes(estimate)} MB; this server's limit is {limits.max_response_bytes} "
                                     f"bytes (limits.max_response_bytes): split the request, ask for fewer hits, or "
                                     "raise limits.max_response_bytes")

    @app.post("/retrieve", response_model=None, responses={200: {"model": RetrieveResponse}, **ERRORS},
              openapi_extra=secured, summary="Search-R1-compatible retrieval")
    async def retrieve(body: RetrieveRequest) -> Response:
        """Top-k documents per query, as Search-R1's retrieval server returns them."""
        # As in Search-R1's server, a missing, null or 0 topk means the server's default.
        topk = body.topk or config.default_topk
        check_k("topk", topk)
        check_queries(body.queries)
        check_answer_size(len(body.queries), "topk", topk)
        render: Callable[[list[Passage]], list[dict[str, Any]]]
        if body.return_scores:
            def render(hits: list[Passage]) -> list[dict[str, Any]]:
                return [{"document": _document(hit), "score": _finite(hit.score)} for hit in hits]
        else:
            def render(hits: list[Passage]) -> list[dict[str, Any]]:
                return [_document(hit) for hit in hits]
        return await _answer_in_slices(b'{"result":[', service.search_slices(body.queries, topk), render, b"]}")

    async def search(body) -> Response:
        check_k("k", body.k)
        check_queries(body.queries)
        mode = service.mode(body.mode)
        check_answer_size(len(body.queries), "k", body.k, mode)
        include = set(body.include_ids) if body.include_ids is not None else None
        exclude = set(body.exclude_ids or ())
        if len(include or ()) + len(exclude) > limits.max_filter_ids:
            raise HTTPException(413, f"include_ids and exclude_ids hold more than {limits.max_filter_ids} ids")
        if include is not None:
            depth = max(body.k, config.filter_depth)
        else:
            depth = body.k + len(exclude)
        fusion = None
        if body.fusion is not None:
            fusion = FusionConfig(method=body.fusion.method, rrf_k=body.fusion.rrf_k, alpha=body.fusion.alpha,
                                  normalization=body.fusion.normalization, depth=max(depth, config.hybrid_depth))

        def render(hits: list[Passage]) -> list[dict[str, Any]]:
            kept = [h for h in hits if h.id not in exclude and (include is None or h.id in include)][: body.k]
            return [{"id": h.id, "title": h.title, "text": h.text, "score": _finite(h.score), "rank": rank}
                    for rank, h in enumerate(kept, start=1)]

        head = _json_bytes({"mode": mode, "k": body.k})[:-1] + b',"results":['
        return await _answer_in_slices(head, service.search_slices(body.queries, depth, mode, fusion), render, b"]}")

    # The body model is built from the fusion registry at app creation, so the annotation is set here.
    search.__annotations__ = {"body": SearchRequest, "return": Response}
    app.post("/search", response_model=None, responses={200: {"model": SearchResponse}, **ERRORS},
             openapi_extra=secured, summary="Dense, BM25 or hybrid search with id filters")(search)

    @app.get("/health", response_model=HealthResponse, summary="liveness, documents and manifest version served (no auth)")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/info", responses={401: ERRORS[401]}, openapi_extra=secured,
             summary="index manifests, limits, batching settings and counters")
    async def info() -> dict[str, Any]:
        return service.info()

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_openapi()
            if api_key is not None:
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["HTTPBearer"] = {
                    "type": "http", "scheme": "bearer",
                    "description": "`Authorization: Bearer <api key>`, checked before the body is read"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app


UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <key>'"


def _key_ok(token: str | None, api_key: str) -> bool:
    return token is not None and secrets.compare_digest(token.encode(), api_key.encode())


class RequestGuard:
    """Pure ASGI middleware: auth first, then the body, counted as it arrives, then a UTF-8/nesting check.

    The body is read here (at most `max_body_bytes`) and handed to the app in one piece, so a chunked
    upload of hundreds of megabytes is cut off with a 413 once it passes the limit, and a request without
    the right key is answered 401 before any of its body is read.
    """

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not _key_ok(token.strip(), self.api_key):
                await _answer(send, 401, UNAUTHORIZED, {"www-authenticate": "Bearer"})
                return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                     f"{self.max_body_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _unparsable_json(body, headers.get("content-type"))
        if problem is not None:
            await _answer(send, 422, [{"loc": ["body"], "msg": problem, "type": "json_invalid"}])
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _unparsable_json(body: bytes, content_type: str | None) -> str | None:
    """Why a JSON body cannot be parsed for reasons FastAPI would report as 400 (bad UTF-8, deep nesting)."""
    if not body or (content_type is not None and "json" not in content_type.lower()):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"JSON decode error: the body is not valid UTF-8 (byte {error.start})"
    if body.count(b"[") + body.count(b"{") < NESTING_SAFE:
        return None  # cannot nest deeper than the parser goes: leave the parsing to FastAPI, once
    try:
        json.loads(text)
    except RecursionError:
        return "JSON decode error: nested too deeply"
    except ValueError:
        return None  # plain syntax errors: FastAPI answers them with a 422 that says where
    return None


NESTING_SAFE = 500  # fewer brackets than this cannot reach Python's recursion limit (1,000) in json.loads


async def _answer(send, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}, ensure_ascii=True).encode()
    # The rest of the body is never read, so the connection cannot carry another request.
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _answer_in_slices(head: bytes, slices: AsyncGenerator[list[list[Passage]], None],
                            render: Callable[[list[Passage]], Any], tail: bytes) -> Response:
    """`head` + one JSON item per query (`render(hits)`, comma-separated) + `tail`, from the service's slices.

    One slice is answered as a plain response. More are streamed: the first two are awaited here, so a request
    the server cannot serve still gets its 4xx, then each slice is written out and dropped as it comes.
    """
    def items(part: list[list[Passage]]) -> bytes:
        return _json_bytes([render(hits) for hits in part])[1:-1]  # without the list's brackets

    try:
        first = await anext(slices, None)
        if first is None:
            return Response(head + tail, media_type="application/json")
        second = await anext(slices, None)
        if second is None:
            return Response(head + items(first) + tail, media_type="application/json")
        opening = head + items(first)
    except BaseException:
        await slices.aclose()  # its queued slices are dropped, not searched for nobody
        raise

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(slices):
            yield opening
            yield b"," + items(second)
            async for part in slices:
                yield b"," + items(part)
            yield tail

    return StreamingResponse(body(), media_type="application/json", background=BackgroundTask(release_memory))


def _json_bytes(content: Any) -> bytes:
    # One C-accelerated dumps instead of FastAPI's recursive jsonable_encoder: for Search-R1's 2,560 x 3
    # results this is the difference between milliseconds and a noticeable share of the request.
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a stored document: escape instead of failing
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f}" if size < 10e6 else f"{size / 1e6:,.0f}"


def _document(hit: Passage) -> dict[str, str]:
    contents = hit.contents  # Passage.contents is a property ("title\ntext", or the text alone without a title)
    return {"id": hit.id, "contents": contents() if callable(contents) else contents}


def _finite(score: float) -> float:
    # JSON has no NaN/Infinity; a degenerate score must not turn a response into invalid JSON.
    return score if math.isfinite(score) else 0.0


def _version() -> str:
    from embedkit import __version__

    return __version__
