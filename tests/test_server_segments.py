"""Issue 24 item 5: the server's reload keeps the segments an update did not change.

A real `RetrievalService` over a real dense folder (tiny random-init encoder), updated by the library's own
add / remove / compact: after each update `reload_if_changed` must hand the unchanged segments over as the very
same opened objects (object identity of the segment reader and of its FAISS index), read only new segments and
new deletion files, and answer exactly what a fresh `Index.load` of the folder answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from embedkit.data.corpus import Document

WORDS = "protein cell gene cancer virus study patients treatment river city film music delta glacier".split()
QUERIES = ["river delta flood", "gene protein cell", "film music city", "glacier snow ridge"]


def docs(prefix: str, count: int, offset: int = 0) -> list[Document]:
    return [Document(id=f"{prefix}{i}", title=WORDS[(i + offset) % len(WORDS)],
                     text=" ".join(WORDS[(i * 3 + j + offset) % len(WORDS)] for j in range(6))) for i in range(count)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.training.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny", seed=5, hidden_size=32, layers=1)
    return Encoder(EncoderConfig(model=str(model), device="cpu"))


@pytest.fixture
def folder(tmp_path, encoder) -> Path:
    from embedkit.index import build_dense_index

    return Path(build_dense_index(docs("b", 30), encoder, tmp_path / "idx", quiet=True))


def answers(index) -> list[list[tuple[str, float]]]:
    return [[(hit.id, round(hit.score, 5)) for hit in hits] for hits in index.search(QUERIES, 50)]


def reload(service) -> bool:
    return asyncio.run(service.reload_if_changed("dense"))


def test_reload_keeps_unchanged_segments_and_answers_like_a_fresh_load(folder, encoder):
    from embedkit.index import Index
    from embedkit.index.lifecycle import add_documents, compact_index, remove_documents
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    service = RetrievalService.from_config(ServerConfig(index=str(folder), device="cpu"))
    try:
        first = service.served["dense"].index
        legacy_faiss = first.faiss_index

        # 1. The first update converts the one-segment folder in place: its FAISS index and document store
        # become segment 0 under the same names, so the server keeps them and reads only the new segment.
        add_documents(folder, docs("u", 8, offset=3), encoder=encoder)
        assert reload(service)
        served = service.served["dense"]
        segments = served.index.segments
        assert len(segments) == 2
        assert segments[0].faiss_index is legacy_faiss and segments[0].docstore is first.docstore
        assert served.reuse is not None and served.reuse.as_dict() == {"kept": 0, "refreshed": 1, "read": 1}
        assert answers(served.index) == answers(Index.load(folder, encoder=encoder))

        # 2. Another add: both segments are kept as they are (the same opened objects); one new segment.
        add_documents(folder, docs("v", 5, offset=7), encoder=encoder)
        assert reload(service)
        served = service.served["dense"]
        assert served.reuse.as_dict() == {"kept": 2, "refreshed": 0, "read": 1}
        assert served.index.segments[0] is segments[0] and served.index.segments[1] is segments[1]
        assert served.describe()["segments"] == {"kept": 2, "refreshed": 0, "read": 1}
        assert answers(served.index) == answers(Index.load(folder, encoder=encoder))
        segments = served.index.segments

        # 3. A removal from segment 1 writes a deletion file: segment 1 keeps its FAISS index and document store
        # and reads only that file; segments 0 and 2 are kept whole.
        remove_documents(folder, ["u2", "u5"])
        assert reload(service)
        served = service.served["dense"]
        new = served.index.segments
        assert served.reuse.as_dict() == {"kept": 2, "refreshed": 1, "read": 0}
        assert new[0] is segments[0] and new[2] is segments[2] and new[1] is not segments[1]
        assert new[1].faiss_index is segments[1].faiss_index and new[1].docstore is segments[1].docstore
        assert sorted(new[1].deleted.tolist()) != sorted(segments[1].deleted.tolist())
        found = answers(served.index)
        assert found == answers(Index.load(folder, encoder=encoder))
        assert not {"u2", "u5"} & {doc_id for hits in found for doc_id, _ in hits}
        assert {"u0", "v0"} <= {doc_id for hits in found for doc_id, _ in hits}
        # The state before the removal still holds the removed documents for requests that came in on it.
        assert {"u2", "u5"} <= {doc.id for doc in segments[1].docstore.by_rows(range(100)).values()}

        # 4. Compaction rewrites every file: nothing is kept.
        compact_index(folder)
        assert reload(service)
        served = service.served["dense"]
        assert served.reuse.as_dict() == {"kept": 0, "refreshed": 0, "read": 1}
        assert answers(served.index) == answers(Index.load(folder, encoder=encoder))
        assert not reload(service)  # nothing changed since: no reload
    finally:
        asyncio.run(service.stop())


def test_a_rebuilt_folder_is_read_again(folder, encoder):
    """A folder replaced whole (build --overwrite) holds other bytes under the same names: its segment 0 is read
    again. (The segment the same add then writes again has the very same bytes and checksums: it may be kept.)"""
    from embedkit.index import Index, build_dense_index
    from embedkit.index.lifecycle import add_documents
    from embedkit.index.reopen import reopen_index

    add_documents(folder, docs("u", 4), encoder=encoder)
    before = Index.load(folder, encoder=encoder)
    build_dense_index(docs("b", 30, offset=1), encoder, folder, overwrite=True, quiet=True)
    add_documents(folder, docs("u", 4), encoder=encoder)
    index, reuse = reopen_index(folder, before, encoder=encoder)
    assert reuse is not None and 0 in reuse.fresh and reuse.refreshed == 0
    assert index.segments[0].faiss_index is not before.segments[0].faiss_index
    assert index.segments[0].docstore is not before.segments[0].docstore
    assert answers(index) == answers(Index.load(folder, encoder=encoder)) != answers(before)


@pytest.mark.parametrize("factory", ["HNSW8", "IVF2,Flat"])
def test_kinds_with_stored_vectors_keep_their_segments(factory, encoder, tmp_path):
    """HNSW and IVF folders keep a raw vector copy per segment (and IVF a trained template): still handed over."""
    from embedkit.index import Index, build_dense_index
    from embedkit.index.lifecycle import add_documents, remove_documents
    from embedkit.index.reopen import reopen_index

    folder = Path(build_dense_index(docs("b", 40), encoder, tmp_path / "idx", factory=factory, quiet=True))
    add_documents(folder, docs("u", 6, offset=2), encoder=encoder)
    served = Index.load(folder, encoder=encoder)
    add_documents(folder, docs("v", 6, offset=5), encoder=encoder)
    remove_documents(folder, ["u1"])
    index, reuse = reopen_index(folder, served, encoder=encoder)
    assert reuse is not None and reuse.as_dict() == {"kept": 1, "refreshed": 1, "read": 1}
    assert index.segments[0] is served.segments[0]
    assert index.segments[1].faiss_index is served.segments[1].faiss_index
    assert answers(index) == answers(Index.load(folder, encoder=encoder))


def test_memory_mapped_segments_stay_mapped(folder, encoder):
    """`serve --mmap`: the kept segments are the same mapped FAISS indexes; only the new one is mapped anew."""
    from embedkit.index import Index
    from embedkit.index.lifecycle import add_documents
    from embedkit.index.reopen import reopen_index

    add_documents(folder, docs("u", 5), encoder=encoder)
    served = Index.load(folder, encoder=encoder, mmap=True)
    add_documents(folder, docs("v", 5, offset=4), encoder=encoder)
    index, reuse = reopen_index(folder, served, encoder=encoder, mmap=True)
    assert reuse is not None and reuse.as_dict() == {"kept": 2, "refreshed": 0, "read": 1}
    assert all(new.faiss_index is old.faiss_index for new, old in zip(index.segments, served.segments, strict=False))
    assert len(served.segments) == 2
    assert answers(index) == answers(Index.load(folder, encoder=encoder))
    # Opened with other options (here: read into memory), nothing is handed over.
    _, other = reopen_index(folder, served, encoder=encoder)
    assert other is not None and other.kept == other.refreshed == 0
