"""Retrieval that never stops an agent run: per-call timeout, retries with back-off, failures reported.

    robust = ResilientRetriever(retriever, timeout_s=10, retries=2)
    result = robust.retrieve(["q1", "q2"], k=3)   # RetrievalResult(passages=[[...], [...]], error=None, attempts=1)
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agents.retrieval import Passage, Retriever

log = logging.getLogger(__name__)


@dataclass
class RetrievalResult:
    passages: list[list[Passage]]
    error: str | None
    attempts: int


class ResilientRetriever:
    """Wrap any `Retriever`: a call that raises or runs past `timeout_s` is retried `retries` times;
    when every attempt fails the result carries the error and empty passage lists.

    A timed-out call cannot be killed from Python; it finishes in a background thread and its result
    is dropped. The pool has a few threads so a hung server does not block the retries.
    """

    def __init__(self, retriever: Retriever, *, timeout_s: float = 30.0, retries: int = 2,
                 backoff_s: float = 0.5) -> None:  # fmt: skip
        self.retriever = retriever
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=retries + 2, thread_name_prefix="retrieve")

    def retrieve(self, queries: Sequence[str], k: int) -> RetrievalResult:
        if not queries:
            return RetrievalResult([], None, 0)
        error = ""
        for attempt in range(self.retries + 1):
            future = self._pool.submit(self.retriever.retrieve, list(queries), k)
            try:
                passages = future.result(timeout=self.timeout_s)
            except concurrent.futures.TimeoutError:
                error = f"retriever timed out after {self.timeout_s:g}s"
            except Exception as exc:  # any failure of a remote or local retriever is recorded, not raised
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                if len(passages) != len(queries):
                    error = f"retriever returned {len(passages)} result lists for {len(queries)} queries"
                else:
                    return RetrievalResult([list(p)[:k] for p in passages], None, attempt + 1)
            log.warning("retrieval attempt %d/%d failed: %s", attempt + 1, self.retries + 1, error)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        return RetrievalResult([[] for _ in queries], error, self.retries + 1)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
