"""Open the retriever an agent searches: an index folder in this process, or a `/retrieve` server."""

from __future__ import annotations

from agents.retrieval import IndexRetriever, Retriever
from embedkit.errors import EmbedkitError


def open_retriever(index: str | None = None, url: str | None = None, *, api_key: str | None = None,
                   timeout: float = 30.0) -> Retriever:  # fmt: skip
    """Exactly one of `index` (an embedkit index folder) or `url` (Search-R1's POST /retrieve server)."""
    if (index is None) == (url is None):
        raise EmbedkitError("give exactly one of --index or --retriever-url")
    if index is not None:
        return IndexRetriever.from_path(index)
    try:
        from agents.http_retriever import HttpRetriever
    except ImportError as error:
        raise EmbedkitError(f"the HTTP retriever is not available in this build: {error}") from None
    # The agent retries (ResilientRetriever); the client itself makes one attempt so retries do not multiply.
    return HttpRetriever(str(url), api_key=api_key, timeout=timeout, retries=0)
