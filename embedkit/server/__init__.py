"""A retrieval service for search-agent loops: Search-R1's `POST /retrieve`, plus `/search`, `/health`, `/info`.

    embedkit serve indexes/wiki --bm25 indexes/wiki-bm25 --port 8000

    from embedkit.server import ServerConfig, create_app
    app = create_app(ServerConfig(index="indexes/wiki"))      # any ASGI server can run it

Concurrent requests' queries are gathered into one search call (`embedkit.server.batching`), so one
encoder forward pass serves many requests.
"""

from embedkit.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # lazy: FastAPI and the index stack load on first use
        from embedkit.server.app import create_app

        return create_app
    raise AttributeError(name)
