"""A `Retriever` over HTTP: any server speaking Search-R1's `POST /retrieve` (embedkit serve, Search-R1's own).

    from agents.http_retriever import HttpRetriever
    retriever = HttpRetriever("http://127.0.0.1:8000", api_key=os.environ.get("EMBEDKIT_API_KEY"))
    passages = retriever.retrieve(["who wrote Hamlet?"], k=3)[0]     # same as IndexRetriever

`RetrievalClient` is the small client underneath; it also reaches embedkit's `/search`, `/health`, `/info`.
Transport failures, timeouts, 429 and 5xx are retried with exponential backoff; other 4xx are raised at
once with the server's message, since repeating a bad request cannot help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx

from agents.retrieval import Passage, passage_from_contents
from embedkit.errors import EmbedkitError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RetrievalError(EmbedkitError):
    """The retrieval server refused a request or stayed unreachable after the retries."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetrievalClient:
    """HTTP client for an embedkit retrieval server (or any Search-R1 `/retrieve` server).

    `base_url` is the server root (`http://host:8000`); a URL ending in `/retrieve`, as Search-R1 configs
    spell it, is accepted too.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url.rstrip("/")
        if base_url.endswith("/retrieve"):
            base_url = base_url[: -len("/retrieve")]
        self.base_url = base_url
        self.retries, self.backoff = max(0, retries), backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=payload)
            except httpx.TransportError as error:  # connect/read errors and timeouts
                failure: str = f"{type(error).__name__}: {error}"
                status = None
            else:
                if response.status_code < 400:
                    return response.json()
                status = response.status_code
                failure = f"HTTP {status}: {_detail(response)}"
                if status not in RETRY_STATUS:
                    raise RetrievalError(f"{method} {self.base_url}{path} failed with {failure}", status=status)
            if attempt >= self.retries:
                raise RetrievalError(f"{method} {self.base_url}{path} failed after {attempt + 1} attempts: {failure}",
                                     status=status)
            delay = self.backoff * 2**attempt
            log.warning("%s %s%s: %s; retrying in %.1fs", method, self.base_url, path, failure, delay)
            time.sleep(delay)
            attempt += 1

    def retrieve(self, queries: Sequence[str], topk: int | None = 3, *, return_scores: bool = True) -> list[list[dict]]:
        """Search-R1's `/retrieve`: the raw `result` list (`{document: {id, contents}, score}` with scores)."""
        payload = {"queries": list(queries), "topk": topk, "return_scores": return_scores}
        return self._request("POST", "/retrieve", payload)["result"]

    def search(self, queries: Sequence[str], *, k: int = 10, mode: str | None = None,
               include_ids: Sequence[str] | None = None, exclude_ids: Sequence[str] | None = None) -> list[list[dict]]:
        """embedkit's `/search`: hits `{id, title, text, score, rank}` per query."""
        payload: dict[str, Any] = {"queries": list(queries), "k": k}
        if mode is not None:
            payload["mode"] = mode
        if include_ids is not None:
            payload["include_ids"] = list(include_ids)
        if exclude_ids is not None:
            payload["exclude_ids"] = list(exclude_ids)
        return self._request("POST", "/search", payload)["results"]

    def health(self) -> dict:
        return self._request("GET", "/health")

    def info(self) -> dict:
        return self._request("GET", "/info")


class HttpRetriever:
    """The `Retriever` protocol over `/retrieve`; agent code is the same as with `IndexRetriever`."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, client: RetrievalClient | None = None) -> None:
        self.client = client or RetrievalClient(url, api_key=api_key, timeout=timeout, retries=retries,
                                                backoff=backoff)

    def retrieve(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        if not queries:
            return []
        result = self.client.retrieve(queries, k, return_scores=True)
        if len(result) != len(queries):
            raise RetrievalError(f"the server answered {len(result)} result lists for {len(queries)} queries")
        return [[_passage(item, rank) for rank, item in enumerate(hits, start=1)] for hits in result]

    def close(self) -> None:
        self.client.close()


def _passage(item: dict, rank: int) -> Passage:
    document, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
    return passage_from_contents(str(document.get("id", "")), str(document.get("contents", "")), score=float(score),
                                 rank=rank)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return str(detail)[:500]
