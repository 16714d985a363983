"""The FastAPI application: routes, bearer-token auth, request limits and error mapping.

Status codes: 401 missing/wrong token; 413 too many queries, a query too long, or a body too large;
422 malformed JSON, wrong types or an out-of-range value (topk, k); 400 a request the indexes cannot serve
(e.g. hybrid mode without a BM25 index). A bug would be a 500; the fuzz test checks there are none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from embedkit.errors import EmbedkitError
from embedkit.hybrid.fusion import FusionConfig
from embedkit.index.base import Hit
from embedkit.server.config import ServerConfig
from embedkit.server.schemas import (
    ErrorResponse,
    HealthResponse,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
)
from embedkit.server.service import RetrievalService

log = logging.getLogger(__name__)

ERRORS = {
    400: {"model": ErrorResponse, "description": "the request cannot be served by this server's indexes"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "too many queries, a query too long, or a body too large"},
    422: {"model": ErrorResponse, "description": "malformed JSON, wrong types, or a value out of range"},
}


def create_app(config: ServerConfig, service: RetrievalService | None = None) -> FastAPI:
    """The ASGI app. `service` defaults to one opening the indexes named in `config`."""
    service = service or RetrievalService.from_config(config)
    limits = config.limits
    api_key = config.resolved_api_key()
    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>` when the server has one")

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

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds the limit of "
                                           f"{limits.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

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
                                     f"{limits.max_queries} (split the request)")
        for position, query in enumerate(queries):
            if len(query) > limits.max_query_chars:
                raise HTTPException(413, f"query {position} has {len(query)} characters; this server's limit is "
                                         f"{limits.max_query_chars}")

    def check_k(name: str, value: int) -> None:
        if not 1 <= value <= limits.max_topk:
            raise HTTPException(422, f"{name} must be between 1 and {limits.max_topk} (this server's limit), got {value}")

    @app.post("/retrieve", response_model=None, responses={200: {"model": RetrieveResponse}, **ERRORS},
              dependencies=[Depends(authorize)], summary="Search-R1-compatible retrieval")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        """Top-k documents per query, as Search-R1's retrieval server returns them."""
        # As in Search-R1's server, a missing, null or 0 topk means the server's default.
        topk = body.topk or config.default_topk
        check_k("topk", topk)
        check_queries(body.queries)
        results = await service.search(body.queries, topk)
        if body.return_scores:
            return {"result": [[{"document": _document(hit), "score": _finite(hit.score)} for hit in hits]
                               for hits in results]}
        return {"result": [[_document(hit) for hit in hits] for hits in results]}

    @app.post("/search", response_model=SearchResponse, responses=ERRORS, dependencies=[Depends(authorize)],
              summary="Dense, BM25 or hybrid search with id filters")
    async def search(body: SearchRequest) -> dict[str, Any]:
        check_k("k", body.k)
        check_queries(body.queries)
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
        results = await service.search(body.queries, depth, body.mode, fusion)
        hits_out = []
        for hits in results:
            kept = [h for h in hits if h.id not in exclude and (include is None or h.id in include)][: body.k]
            hits_out.append([{"id": h.id, "title": h.title, "text": h.text, "score": _finite(h.score), "rank": rank}
                             for rank, h in enumerate(kept, start=1)])
        return {"mode": body.mode or service.default_mode, "k": body.k, "results": hits_out}

    @app.get("/health", response_model=HealthResponse, summary="liveness (no auth)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "modes": service.modes,
                "documents": {kind: len(index) for kind, index in service.indexes.items()}}

    @app.get("/info", responses={401: ERRORS[401]}, dependencies=[Depends(authorize)],
             summary="index manifests, limits, batching settings and counters")
    async def info() -> dict[str, Any]:
        return service.info()

    return app


def _document(hit: Hit) -> dict[str, str]:
    return {"id": hit.id, "contents": hit.contents()}


def _finite(score: float) -> float:
    # JSON has no NaN/Infinity; a degenerate score must not turn a response into invalid JSON.
    return score if math.isfinite(score) else 0.0


def _version() -> str:
    from embedkit import __version__

    return __version__
