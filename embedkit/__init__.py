"""embedkit: embedding and retrieval research toolkit.

Quick start::

    from embedkit import Index
    index = Index.load("indexes/scifact")
    for hit in index.search("what causes anaemia?", k=5)[0]:
        print(hit.rank, hit.score, hit.id, hit.title)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embedkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from embedkit.errors import EmbedkitError  # noqa: E402


def __getattr__(name: str):
    # Lazy so that `import embedkit` stays cheap (torch and faiss load only when used).
    if name == "Index":
        from embedkit.index import Index

        return Index
    if name == "Encoder":
        from embedkit.encoding import Encoder

        return Encoder
    raise AttributeError(name)


__all__ = ["EmbedkitError", "Index", "Encoder", "__version__"]
