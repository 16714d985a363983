"""Issue 24, the dense gaps: every caller of a folder's FAISS index works on several segments, the torch backend
keeps per-segment matrices through a server reload, faiss-gpu searches segment by segment, and IVF/PQ updates
copy a trained template written at build time instead of reading index.faiss.

Synthetic vectors (dim 8) for the library-level checks; a tiny random-init encoder where a real server or scorer
encodes queries. The faiss-gpu checks skip cleanly without faiss-gpu and a GPU.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from embedkit.data.corpus import Document
from embedkit.encoding import EncoderSpec
from embedkit.errors import EmbedkitError
from embedkit.index import Index, write_dense_index
from embedkit.index.dense import DenseIndex
from embedkit.index.faiss_ops import faiss_row_ids
from embedkit.index.lifecycle import add_vectors, remove_documents
from embedkit.index.manifest import DenseManifest

DIM = 8
SPEC = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=DIM)
QUERIES = np.random.default_rng(5).standard_normal((12, DIM)).astype(np.float32)  # < 20: FAISS's exact loop


def vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def docs_for(ids: list[str]) -> list[Document]:
    return [Document(id=doc_id, text=doc_id) for doc_id in ids]


def three_segments(folder: Path, factory: str) -> dict[str, np.ndarray]:
    """40 documents, then an add that replaces two of them, a removal, and another add: 3 segments with deletions
    in the first two. Returns what the folder should hold (id -> vector)."""
    ids = [f"d{i}" for i in range(40)]
    start = vectors(40, 1)
    write_dense_index(folder, start, docs_for(ids), SPEC, factory=factory, overwrite=True)
    live = dict(zip(ids, start, strict=True))
    for batch, seed in ((["d3", "d7", "n0", "n1", "n2"], 2), (["m0", "m1", "n1"], 3)):
        new = vectors(len(batch), seed)
        add_vectors(folder, docs_for(batch), new)
        for doc_id, vec in zip(batch, new, strict=True):
            live.pop(doc_id, None)
            live[doc_id] = vec
        if seed == 2:
            remove_documents(folder, ["d10", "n2"])
            live.pop("d10"), live.pop("n2")
    manifest = DenseManifest.load(folder)
    assert len(manifest.segments) == 3 and all(s.num_deleted for s in manifest.segments[:2])
    return live


def hits(index: Index, **params) -> list[list[tuple[str, float]]]:
    assert isinstance(index, DenseIndex)
    return [[(hit.id, hit.score) for hit in query] for query in index.search_vectors(QUERIES, 10, with_text=False,
                                                                                     **params)]


def assert_same(got, want, *, atol: float = 1e-5) -> None:
    for got_query, want_query in zip(got, want, strict=True):
        assert [doc_id for doc_id, _ in got_query] == [doc_id for doc_id, _ in want_query]
        np.testing.assert_allclose([s for _, s in got_query], [s for _, s in want_query], rtol=0, atol=atol)


# --- one FAISS index where a caller needs one ------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "mmap"), [("Flat", False), ("IVF4,Flat", False), ("IVF4,Flat", True),
                                              ("IVF4,PQ4x4", False), ("IVF4,PQ4x4fs", False), ("HNSW8", True)])
def test_the_faiss_index_of_several_segments_holds_every_live_row_once(tmp_path, factory, mmap):
    """`DenseIndex.faiss_index` of a 3-segment folder is one merged in-memory index: live rows under their row
    ids (deleted ones dropped), answering what the folder answers (IVF: the very codes, so PQ too; memory-mapped
    segments are only read; fast-scan lists are merged by FAISS)."""
    import faiss

    live = three_segments(tmp_path / "idx", factory)
    index = Index.load(tmp_path / "idx", mmap=mmap)
    assert isinstance(index, DenseIndex)
    merged = index.faiss_index
    assert merged.ntotal == len(live) == len(index)
    assert np.array_equal(np.sort(faiss_row_ids(merged)), index.live_rows())
    params = {"nprobe": 4} if "IVF" in factory else {"ef_search": 64} if "HNSW" in factory else {}
    if "IVF" in factory:
        faiss.extract_index_ivf(merged).nprobe = 4
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(merged, "efSearch", 64)
    scores, rows = merged.search(QUERIES, 10)
    ids = index.docstore.ids_by_row()
    direct = [[(ids[int(r)], float(s)) for s, r in zip(qs, qr, strict=True)] for qs, qr in zip(scores, rows, strict=True)]
    folder = hits(index, **params)
    if factory in ("Flat", "IVF4,Flat"):
        assert_same(direct, folder)
    else:  # PQ codes tie often, HNSW graphs differ: the same scores for the same vectors, live ids only
        for got, want in zip(direct, folder, strict=True):
            assert {doc_id for doc_id, _ in got} <= set(live)
            if "PQ" in factory:
                np.testing.assert_allclose(sorted(s for _, s in got), sorted(s for _, s in want), atol=1e-5)
    # The served segments were copied, not emptied into the merge.
    assert_same(hits(index, **params), folder)


def test_one_segment_folders_keep_their_own_faiss_index(tmp_path):
    path = write_dense_index(tmp_path / "one", vectors(12, 4), docs_for([f"d{i}" for i in range(12)]), SPEC)
    index = Index.load(path)
    assert isinstance(index, DenseIndex)
    assert index.faiss_index.ntotal == 12 and not index.manifest.segments


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.training.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny", seed=5, hidden_size=32, layers=1)
    return Encoder(EncoderConfig(model=str(model), device="cpu"))


WORDS = "protein cell gene cancer virus study patients treatment river city film music delta glacier".split()


def texts(prefix: str, count: int, offset: int = 0) -> list[Document]:
    """Documents i and i + 14 have the same text: equal vectors, so the tie rule decides their order."""
    return [Document(id=f"{prefix}{i}", title=WORDS[(i + offset) % len(WORDS)],
                     text=" ".join(WORDS[(i * 3 + j + offset) % len(WORDS)] for j in range(6))) for i in range(count)]


@pytest.fixture
def segmented(tmp_path, encoder) -> Path:
    """A real encoder's folder with 3 segments and deletions in the first two."""
    from embedkit.index import build_dense_index
    from embedkit.index.lifecycle import add_documents

    folder = Path(build_dense_index(texts("b", 30), encoder, tmp_path / "idx", quiet=True))
    add_documents(folder, texts("u", 8, offset=3), encoder=encoder)
    remove_documents(folder, ["b4", "u1"])
    add_documents(folder, texts("v", 5, offset=7), encoder=encoder)
    assert len(DenseManifest.load(folder).segments) == 3
    return folder


def test_the_embedder_utility_reads_vectors_of_a_segmented_folder(segmented, encoder):
    """agents' "embedder" local utility took passage vectors from `faiss_index.reconstruct`: it now reads them
    through the index (any number of segments) and scores exactly what encoding the passages gives."""
    from agents.agentic_r.utility import LOCAL_SCORERS, Step

    index = Index.load(segmented, encoder=encoder)
    candidates = index.search(["river delta flood"], 6)[0]
    assert len(candidates) == 6
    step = Step(trajectory=None, turn=0, query="gene protein cell", retriever_query="q", candidates=candidates)  # type: ignore[arg-type]
    LOCAL_SCORERS.get("embedder")(index)([step])
    passages = encoder.encode_documents([Document(id=p.id, text=p.text, title=p.title) for p in candidates])
    query = encoder.encode_queries(["gene protein cell"])[0]
    cosine = (passages / np.linalg.norm(passages, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    np.testing.assert_allclose(step.local, np.clip(cosine, 0.0, 1.0), atol=1e-5)


# --- reload: the public API reopen uses, the torch backend's per-segment matrices --------------------------------


def test_segments_are_handed_over_only_before_they_open(segmented, encoder):
    index = DenseIndex(segmented, DenseManifest.load(segmented), encoder=encoder)  # what reopen gets: unopened
    assert not index.segments_opened and index.opened_segments() == []
    with pytest.raises(EmbedkitError, match="not the manifest's segments"):
        index.use_segments([])
    _ = index.search("river", 3)
    assert index.segments_opened and [reader for reader, own in index.opened_segments() if own] == index.segments
    with pytest.raises(EmbedkitError, match="open already"):
        index.use_segments(index.segments)


def answers(index) -> list[list[tuple[str, float]]]:
    return [[(hit.id, hit.score) for hit in found] for found in index.search(QUERIES_TEXT, 40)]


QUERIES_TEXT = ["river delta flood", "gene protein cell", "film music city", "glacier snow ridge"]


def test_torch_reload_reads_only_new_segments_and_changed_masks(tmp_path, encoder):
    """The server with the torch backend: after an add only the new segment's matrix is built; after a removal
    the segment keeps its matrix and gets a new mask; answers equal the faiss backend's (ties by row)."""
    from embedkit.index import build_dense_index
    from embedkit.index.lifecycle import add_documents
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    folder = Path(build_dense_index(texts("b", 30), encoder, tmp_path / "idx", quiet=True))
    service = RetrievalService.from_config(ServerConfig(index=str(folder), device="cpu", backend="torch"))

    def reload() -> DenseIndex:
        assert asyncio.run(service.reload_if_changed("dense"))
        index = service.served["dense"].index
        assert isinstance(index, DenseIndex)
        assert_same(answers(index), answers(Index.load(folder, encoder=encoder)))  # the faiss backend
        return index

    try:
        first = service.served["dense"].index
        assert isinstance(first, DenseIndex)
        matrix = first.torch_searcher
        add_documents(folder, texts("u", 8, offset=3), encoder=encoder)  # converts: segment 0 keeps the matrix
        index = reload()
        assert service.served["dense"].reuse.as_dict() == {"kept": 0, "refreshed": 1, "read": 1}
        assert index.segments[0].torch_search is matrix
        segments = index.segments

        add_documents(folder, texts("v", 5, offset=7), encoder=encoder)
        index = reload()
        assert service.served["dense"].reuse.as_dict() == {"kept": 2, "refreshed": 0, "read": 1}
        assert index.segments[:2] == segments
        segments = index.segments

        remove_documents(folder, ["u2", "b20"])  # deletion files for segments 0 and 1
        index = reload()
        assert service.served["dense"].reuse.as_dict() == {"kept": 1, "refreshed": 2, "read": 0}
        for new, old in zip(index.segments[:2], segments[:2], strict=True):
            assert new is not old and new.torch_search is old.torch_search and new.torch_live is not old.torch_live
        assert index.segments[2] is segments[2]
        found = {doc_id for query in answers(index) for doc_id, _ in query}
        assert not {"u2", "b20"} & found and {"b6", "u0", "v0"} <= found
    finally:
        asyncio.run(service.stop())


def test_torch_and_faiss_break_ties_alike_over_segments(segmented, encoder):
    """Equal vectors (documents i and i + 14) in one segment and across segments: the lower row first."""
    faiss_answers = answers(Index.load(segmented, encoder=encoder))
    torch_answers = answers(Index.load(segmented, encoder=encoder, backend="torch", search_device="cpu"))
    assert_same(torch_answers, faiss_answers)
    tied = [(a, b) for query in faiss_answers for (a, sa), (b, sb) in zip(query, query[1:], strict=False) if sa == sb]
    assert tied  # the corpus really has ties for the rule to decide


# --- faiss-gpu: one per-segment code path (runs where faiss-gpu and a GPU are) -----------------------------------


def _gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


needs_gpu = pytest.mark.skipif(_gpus() == 0, reason="faiss-gpu with a CUDA GPU is not available here")


@needs_gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_faiss_gpu_searches_three_segments_like_the_cpu(tmp_path, factory):
    three_segments(tmp_path / "idx", factory)
    params = {"nprobe": 4} if "IVF" in factory else {}
    cpu = Index.load(tmp_path / "idx")
    gpu = Index.load(tmp_path / "idx", backend="faiss-gpu")
    assert_same(hits(gpu, **params), hits(cpu, **params), atol=1e-3)
    assert gpu.faiss_index.ntotal == cpu.faiss_index.ntotal == len(cpu)


@needs_gpu
def test_the_server_clones_each_new_segment_to_the_gpus(segmented, encoder):
    from embedkit.index.lifecycle import add_documents
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    service = RetrievalService.from_config(ServerConfig(index=str(segmented), device="cpu", backend="faiss-gpu"))
    try:
        before = service.served["dense"].index.segments
        add_documents(segmented, texts("w", 4, offset=2), encoder=encoder)
        assert asyncio.run(service.reload_if_changed("dense"))
        index = service.served["dense"].index
        assert service.served["dense"].reuse.as_dict() == {"kept": 3, "refreshed": 0, "read": 1}
        assert index.segments[:3] == before
        assert_same(answers(index), answers(Index.load(segmented, encoder=encoder)), atol=1e-3)
    finally:
        asyncio.run(service.stop())


# --- IVF/PQ: the trained template is written at build time ----------------------------------------------------


@pytest.fixture
def faiss_reads(monkeypatch) -> list[tuple[str, int]]:
    """(file name, IO flags) of every FAISS file loaded from here on (a wrapper around faiss.read_index).

    Reads with IO_FLAG_MMAP_IFC are left out: they are `check_faiss_sizes`'s bounds checks, which map the file
    and copy nothing."""
    import faiss

    reads: list[tuple[str, int]] = []
    original = faiss.read_index
    checking = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)

    def recording(path, flags=0):
        if not flags & checking:
            reads.append((Path(path).name, flags))
        return original(path, flags)

    monkeypatch.setattr(faiss, "read_index", recording)
    return reads


def exact(live: dict[str, np.ndarray], tmp_path: Path) -> list[list[tuple[str, float]]]:
    ids = list(live)
    return hits(Index.load(write_dense_index(tmp_path / "exact", np.stack([live[i] for i in ids]), docs_for(ids),
                                             SPEC, factory="Flat", overwrite=True)))


def test_a_fresh_ivf_folder_is_updated_without_reading_index_faiss(tmp_path, faiss_reads):
    ids = [f"d{i}" for i in range(60)]
    start = vectors(60, 6)
    path = write_dense_index(tmp_path / "ivf", start, docs_for(ids), SPEC, factory="IVF4,Flat")
    manifest = DenseManifest.load(path)
    assert manifest.trained_index == "trained-000000.faiss" and manifest.trained_rows == 60
    assert manifest.trained_index in manifest.files and not manifest.segments
    faiss_reads.clear()
    new = vectors(3, 7)
    add_vectors(path, docs_for(["d2", "n0", "n1"]), new)
    remove_documents(path, ["d5"])
    assert faiss_reads == [("trained-000000.faiss", 0)]  # only the small template, once
    live = dict(zip(ids, start, strict=True))
    for doc_id, vec in zip(["d2", "n0", "n1"], new, strict=True):
        live.pop(doc_id, None)  # an upsert gets a new, later row
        live[doc_id] = vec
    live.pop("d5")
    assert_same(hits(Index.load(path), nprobe=4), exact(live, tmp_path))


@pytest.mark.parametrize(("factory", "mapped"), [("IVF4,Flat", True), ("OPQ4,IVF4,PQ4x4", True), ("PQ4x4", False)])
def test_an_old_trained_folder_derives_its_template_from_a_mapped_index_faiss(tmp_path, faiss_reads, factory, mapped):
    """Folders built before templates were written: the first update maps index.faiss (IVF kinds: the lists are
    never read) to derive the template, writes it, and later updates read only the template."""
    import faiss

    ids = [f"d{i}" for i in range(300)]
    start = vectors(300, 8)
    path = write_dense_index(tmp_path / "old", start, docs_for(ids), SPEC, factory=factory, store_vectors="float32")
    manifest = DenseManifest.load(path)
    (path / manifest.trained_index).unlink()
    files = {name: record for name, record in manifest.files.items() if name != manifest.trained_index}
    manifest.model_copy(update={"trained_index": None, "trained_rows": None, "files": files}).save(path)
    assert DenseManifest.load(path).trained_index is None
    faiss_reads.clear()
    add_vectors(path, docs_for(["n0"]), start[:1] * 4)
    assert [name for name, _ in faiss_reads] == ["index.faiss"]
    assert (faiss_reads[0][1] & faiss.IO_FLAG_MMAP == faiss.IO_FLAG_MMAP) is mapped
    manifest = DenseManifest.load(path)
    assert manifest.trained_index == "trained-000001.faiss" and manifest.trained_rows == 300
    faiss_reads.clear()
    add_vectors(path, docs_for(["n1"]), start[1:2] * 4)
    assert faiss_reads == [("trained-000001.faiss", 0)]
    if factory == "IVF4,Flat":  # exact at full nprobe: the derived template is the trained structure
        live = {**dict(zip(ids, start, strict=True)), "n0": start[0] * 4, "n1": start[1] * 4}
        assert_same(hits(Index.load(path), nprobe=4), exact(live, tmp_path))
    else:  # lossy codes: the documents added through the template are found by their own vectors
        index = Index.load(path)
        assert isinstance(index, DenseIndex)
        params = {"nprobe": 4} if "IVF" in factory else {}
        found = index.search_vectors(np.stack([start[0] * 4, start[1] * 4]), 5, with_text=False, **params)
        assert "n0" in {hit.id for hit in found[0]} and "n1" in {hit.id for hit in found[1]}


# --- the torch searcher's pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_scores_do_not_depend_on_the_matrix_holding_the_vector(metric):
    """One vector scored inside a 1000-row matrix and alone: bit-identical (matrix products alone are not)."""
    from embedkit.index.torch_search import TorchExactSearch

    rng = np.random.default_rng(3)
    big, queries = rng.standard_normal((1000, 64)).astype(np.float32), rng.standard_normal((5, 64)).astype(np.float32)
    scores, rows = TorchExactSearch(big, metric=metric, device="cpu", chunk_rows=300).search(queries, 1000)
    alone, _ = TorchExactSearch(big[500:501], np.array([500]), metric=metric, device="cpu").search(queries, 1)
    assert np.array_equal(scores[rows == 500], alone[:, 0])


def test_torch_masked_rows_are_never_answered():
    from embedkit.index.torch_search import TorchExactSearch

    matrix = vectors(10, 9)
    searcher = TorchExactSearch(matrix, np.arange(100, 110), device="cpu", chunk_rows=4)
    assert searcher.live_mask(np.array([], dtype=np.int64)) is None
    live = searcher.live_mask(np.array([101, 105, 109, 7]))  # 7 is no row of this searcher
    scores, rows = searcher.search(QUERIES, 9, live=live)
    assert not np.isin(rows, [101, 105, 109]).any()
    assert (rows[:, 7:] == -1).all() and (rows[:, :7] >= 100).all() and np.isneginf(scores[:, 7:]).all()
    everything, _ = searcher.search(QUERIES, 10)
    for query_scores, query_rows, all_scores in zip(scores, rows, everything, strict=True):
        assert set(query_rows[:7].tolist()) == set(range(100, 110)) - {101, 105, 109}
        assert set(np.round(query_scores[:7], 5)) <= set(np.round(all_scores, 5))
