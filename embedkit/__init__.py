"""embedkit: embedding and retrieval research toolkit.

Quick start::

    from embedkit import Index
    index = Index.load("indexes/scifact")
    for hit in index.search("what causes anaemia?", k=5)[0]:
        print(hit.rank, hit.score, hit.id, hit.title)
"""

from __future__ import annotations

from embedkit.errors import EmbedkitError


def __getattr__(name: str):
    # Lazy so that `import embedkit` stays cheap (torch and faiss load only when used; importlib.metadata
    # alone costs ~70 ms of CLI start-up).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("embedkit")
        except PackageNotFoundError:  # running from a source tree without installation
            return "0.0.0+local"
    if name == "Index":
        from embedkit.index import Index

        return Index
    if name == "Encoder":
        from embedkit.encoding import Encoder

        return Encoder
    raise AttributeError(name)


__all__ = ["EmbedkitError", "Index", "Encoder", "__version__"]
