"""FAISS operations shared by every dense index: create from a factory string, train, add, tune search."""

from __future__ import annotations

import re
import threading

import numpy as np

from embedkit.errors import EmbedkitError

METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}


def faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise EmbedkitError(f"unknown metric '{metric}' (use {' or '.join(METRICS)})")
    return getattr(faiss, METRICS[metric])


# Parameters FAISS accepts in a factory string but then crashes on (assertion abort, SIGSEGV, SIGFPE) or hangs.
_HNSW_M = re.compile(r"HNSW(\d+)")
_NUMBER_AFTER_NAME = re.compile(r"(?<![0-9])([A-Za-z_]+)(\d+)(?:x(\d+))?")


def check_factory(factory: str) -> None:
    """Refuse factory strings that FAISS parses but later aborts the process on (e.g. HNSW0, HNSW1, PQ4x0).

    FAISS checks these with C++ assertions that kill the process instead of raising, so they are checked here.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise EmbedkitError("the FAISS index factory string is empty (e.g. Flat, HNSW32, IVF1024,Flat)")
    for match in _HNSW_M.finditer(factory):
        if int(match.group(1)) < 2:
            raise EmbedkitError(f"invalid FAISS index factory '{factory}': HNSW needs M >= 2 neighbours per node "
                                f"(got {match.group(0)}); HNSW32 is a good default")
    for match in _NUMBER_AFTER_NAME.finditer(factory):
        number, bits = int(match.group(2)), match.group(3)
        if number < 1 or (bits is not None and int(bits) < 1):
            raise EmbedkitError(f"invalid FAISS index factory '{factory}': '{match.group(0)}' needs a size of at "
                                "least 1 (e.g. IVF1024,Flat, PQ16, HNSW32)")
    if "NSG" in factory:
        raise EmbedkitError(f"FAISS index factory '{factory}': NSG indexes are not supported (FAISS can hang "
                            "building them on small or clustered data); use HNSW32")


def create_index(dim: int, factory: str, metric: str):
    """An empty index from any FAISS index-factory string, wrapped so it stores our integer row ids."""
    import faiss

    check_factory(factory)
    try:
        index = faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as error:
        raise EmbedkitError(f"invalid FAISS index factory '{factory}' for dim {dim}: {_faiss_message(error)}") from None
    if not _supports_ids(index):
        index = faiss.IndexIDMap2(index)
    return index


def _supports_ids(index) -> bool:
    import faiss

    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def train_index(index, vectors: np.ndarray, *, sample_size: int, seed: int = 0) -> int:
    """Train on a random sample of rows (IVF/PQ/SQ need it; Flat and HNSW do not). Returns the sample size."""
    if index.is_trained:
        return 0
    rng = np.random.default_rng(seed)
    count = min(sample_size, len(vectors))
    rows = np.sort(rng.choice(len(vectors), size=count, replace=False))
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    try:
        index.train(sample)
    except RuntimeError as error:
        raise EmbedkitError(
            f"cannot train the index on {count} vectors: {_faiss_message(error)} "
            "(IVFn needs at least n training vectors, ~39n recommended; use a smaller n or a larger --train-sample)"
        ) from None
    return count


def add_vectors(index, vectors: np.ndarray, rows: np.ndarray, *, chunk: int = 65536) -> None:
    for start in range(0, len(vectors), chunk):
        part = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        index.add_with_ids(part, np.ascontiguousarray(rows[start : start + chunk], dtype=np.int64))


def set_search_parameters(index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Apply IVF nprobe / HNSW efSearch wherever they live inside wrapper indexes."""
    import faiss

    space = faiss.ParameterSpace()
    try:
        if nprobe is not None:
            space.set_index_parameter(index, "nprobe", nprobe)
        if ef_search is not None:
            space.set_index_parameter(index, "efSearch", ef_search)
    except RuntimeError as error:
        raise EmbedkitError(f"search parameter not supported by this index: {_faiss_message(error)}") from None


def _faiss_message(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith("error:") or "Error" in line:
            return line
    return lines[-1] if lines else type(error).__name__


def unwrap(index):
    """The index inside IndexIDMap/IndexIDMap2/IndexPreTransform wrappers, downcast to its real class."""
    import faiss

    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def ivf_of(index):
    """The IndexIVF inside `index`, or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def stores_exact_vectors(index) -> bool:
    """True when the index can give back the exact float32 vectors it was fed (Flat, HNSW-Flat, IVF-Flat).

    Lossy kinds (PQ, SQ, OPQ/PCA pre-transforms) cannot, so an index folder keeps a copy of the vectors for them.
    """
    import faiss

    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap) or isinstance(outer, faiss.IndexIDMap2):
        outer = faiss.downcast_index(outer.index)
    if isinstance(outer, faiss.IndexPreTransform):
        return False
    ivf = ivf_of(outer)
    if ivf is not None:
        return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
    if isinstance(outer, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(outer.storage), faiss.IndexFlat)
    return isinstance(outer, faiss.IndexFlat)


def reconstruct_rows(index, rows: np.ndarray) -> np.ndarray:
    """Stored vectors for the given row ids (exact only when `stores_exact_vectors(index)`)."""
    import faiss

    ivf = ivf_of(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # rows are arbitrary ids, not 0..n-1
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.asarray(index.reconstruct_batch(rows), dtype=np.float32)


def try_remove(index, rows: np.ndarray) -> bool:
    """Remove row ids from the index; False when this index kind cannot remove (HNSW): mask them instead."""
    import faiss

    if len(rows) == 0:
        return True
    ivf = ivf_of(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # remove_ids refuses hashtable direct maps
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
    try:
        index.remove_ids(selector)
    except RuntimeError:
        return False
    return True


def default_nprobe(nlist: int) -> int:
    """embedkit's default IVF nprobe: FAISS's 1 loses too much recall; nlist/16, between 8 and 64, keeps it high."""
    return int(min(nlist, max(8, min(64, nlist // 16))))


DEFAULT_EF_SEARCH = 64  # FAISS's 16 often stays well below 0.95 recall@10 on real embeddings


def search_defaults(index) -> dict[str, int]:
    """Search parameters recorded in the manifest at build time (see `default_nprobe`, `DEFAULT_EF_SEARCH`)."""
    import faiss

    ivf = ivf_of(index)
    if ivf is not None:
        return {"nprobe": default_nprobe(ivf.nlist)}
    if isinstance(unwrap(index), faiss.IndexHNSW):
        return {"ef_search": DEFAULT_EF_SEARCH}
    return {}


def search(index, vectors: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search, optionally excluding row ids (deleted documents of indexes that cannot remove them).

    The exclusion goes into FAISS's search parameters (an IDSelector), so the k results are k live rows;
    when an index kind rejects selectors, it over-fetches and filters instead.
    """
    import faiss

    set_search_parameters(index, nprobe=nprobe, ef_search=ef_search)
    k = max(1, min(k, index.ntotal))
    if exclude is None or len(exclude) == 0:
        return index.search(vectors, k)
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search or inner.hnsw.efSearch, k)
    elif ivf_of(index) is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe or faiss.extract_index_ivf(index).nprobe
    else:
        params = faiss.SearchParameters()
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(exclude, dtype=np.int64))
    params.sel = faiss.IDSelectorNot(batch)
    try:
        return index.search(vectors, k, params=params)
    except RuntimeError:
        return _search_filtered(index, vectors, k, exclude)


def _search_filtered(index, vectors: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fetch = min(index.ntotal, k + len(exclude))
    scores, rows = index.search(vectors, fetch)
    keep = ~np.isin(rows, exclude)
    out_scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(vectors), k), -1, dtype=np.int64)
    for i in range(len(vectors)):
        found_rows, found_scores = rows[i][keep[i]][:k], scores[i][keep[i]][:k]
        out_rows[i, : len(found_rows)], out_scores[i, : len(found_scores)] = found_rows, found_scores
    return out_scores, out_rows


# While a file's sizes are checked, FAISS may allocate at most this much for one vector even when the file is
# smaller: room for the tables it derives from a header (not stored) on small real indexes.
SIZE_CHECK_FLOOR_BYTES = 64 << 20
# Counts that drive FAISS loops (IVF nlist, NSG size…) cost ~160 bytes of bookkeeping per item before any size
# is read; in a real file each list has at least its 8-byte size (sparse IVF lists of a multi-index quantizer
# excepted: up to this many lists are let through, IMI2x10's count).
SIZE_CHECK_FLOOR_COUNT = 1 << 20
# FAISS's messages for tables it derives from header fields instead of reading (so a real file can be smaller
# than them): above the lowered limit they end the check, not the read. Stored sizes (PQ centroids…) refuse.
_DERIVED_TABLES = ("precomputed_table", "HadamardRotation", "VectorTransform d_in * d_out", "max_beam_size",
                   "ResidualCoarseQuantizer")
_size_check_lock = threading.Lock()


def check_faiss_sizes(path, flags: int = 0) -> None:
    """Refuse a FAISS file whose size fields ask for more than the file holds, before FAISS allocates them.

    FAISS resizes each stored vector to the size its file records and only then reads the bytes, so a damaged or
    crafted size field (up to its 1 TiB cap) costs that much memory, or the OOM killer, before the read error.
    Here FAISS's own reader reads the file once through a memory map (IO_FLAG_MMAP_IFC: codes, graph links and
    inverted lists become views, bounds-checked against the file) with its per-vector byte limit lowered to the
    file's length (`SIZE_CHECK_FLOOR_BYTES` at least) and its loop-count limit to one item per 8 bytes
    (`SIZE_CHECK_FLOOR_COUNT` at least), so every recorded size is checked against the bytes that follow it and
    nothing larger is allocated. Tables FAISS derives rather than reads are not bounded by the
    file: when one of those is above the lowered limit the check cannot finish, and the read keeps FAISS's own
    cap. FAISS < 1.14.2 has no settable limit: nothing is checked there.

    >>> import faiss, tempfile
    >>> path = f"{tempfile.mkdtemp()}/flat.faiss"
    >>> faiss.write_index(faiss.IndexFlatIP(4), path)
    >>> check_faiss_sizes(path)
    """
    import os

    import faiss

    from embedkit.errors import IndexFormatError

    if not all(hasattr(faiss, name) for name in (
            "set_deserialization_vector_byte_limit", "set_deserialization_loop_limit", "IO_FLAG_MMAP_IFC")):
        return
    size = os.path.getsize(path)
    limit = max(size, SIZE_CHECK_FLOOR_BYTES)
    loop_limit = max(size // 8, SIZE_CHECK_FLOOR_COUNT)
    # IO_FLAG_MMAP's and IO_FLAG_ONDISK_SAME_DIR's on-disk lists need FAISS's plain file reader, which
    # MMAP_IFC replaces: without MMAP the lists are checked as arrays; with ONDISK_SAME_DIR (lists in their own
    # file) every vector the index file holds is read under the lowered limit instead, so at most its size.
    check_flags = (flags & ~faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE
    if not flags & faiss.IO_FLAG_ONDISK_SAME_DIR:
        check_flags |= faiss.IO_FLAG_MMAP_IFC
    with _size_check_lock:  # the limits are process-wide in FAISS
        previous = faiss.get_deserialization_vector_byte_limit()
        previous_loops = faiss.get_deserialization_loop_limit()  # 0: no limit
        faiss.set_deserialization_vector_byte_limit(min(previous, limit))
        faiss.set_deserialization_loop_limit(min(previous_loops or loop_limit, loop_limit))
        try:
            faiss.read_index(str(path), check_flags)
        except RuntimeError as error:
            message = str(error).splitlines()[-1] if str(error).strip() else type(error).__name__
            if any(table in message for table in _DERIVED_TABLES):
                return
            raise IndexFormatError(f"{path} is damaged: a size or count it records does not fit the file's {size} "
                                   f"bytes, so FAISS would allocate memory no data fills ({message}); rebuild the "
                                   "index") from None
        finally:
            faiss.set_deserialization_vector_byte_limit(previous)
            faiss.set_deserialization_loop_limit(previous_loops)


def read_faiss_file(path, *, mmap: bool = False, on_disk: bool = False):
    """Read a FAISS file (memory-mapped with `mmap`); unreadable or absurd sizes are IndexFormatError, refused
    before FAISS allocates them where `check_faiss_sizes` can tell."""
    import faiss

    from embedkit.errors import IndexFormatError

    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    if on_disk:
        flags |= faiss.IO_FLAG_ONDISK_SAME_DIR  # the lists file is found beside index.faiss wherever it moved
    try:
        check_faiss_sizes(path, flags)
        return faiss.read_index(str(path), flags)
    except RuntimeError as error:
        raise IndexFormatError(f"{path} cannot be read ({str(error).splitlines()[-1]}); rebuild the index") from None
    except MemoryError:  # FAISS's std::bad_alloc: a size field larger than any real index (or this machine)
        raise IndexFormatError(f"{path} cannot be read: it asks for more memory than this machine has (a damaged "
                               "size field, or an index too large for RAM: try --mmap)") from None


def empty_trained_copy(path, *, ivf: bool):
    """The trained structure of the FAISS file at `path` without its vectors: what new segments of a folder built
    before templates were written start from. IVF kinds (`ivf`) are memory-mapped (IO_FLAG_MMAP) and their
    inverted lists replaced unread, so the cost is the quantizer's; other kinds are read whole and emptied."""
    import faiss

    if not ivf:
        index = read_faiss_file(path)
        index.reset()
        return index
    index = read_faiss_file(path, mmap=True)
    lists = ivf_of(index)
    if lists is None:
        raise EmbedkitError(f"{path} holds no IVF index, unlike its folder's factory; rebuild the index")
    empty = faiss.ArrayInvertedLists(lists.nlist, lists.code_size)
    empty.this.disown()  # owned by the index from here on (replace_invlists(own=True)): Python must not free it
    lists.replace_invlists(empty, True)
    index.reset()  # counts and direct map; a wrapper (OPQ, PCA) resets the IVF inside too
    return index


def append_ivf_entries(source, target, *, skip: np.ndarray | None = None) -> int:
    """Append the entries (ids and codes) of `source`'s inverted lists to `target`'s, leaving out ids in `skip`;
    both must share one trained structure (copies of one template). Returns how many were appended.

    Codes are copied as stored, so lossy kinds (PQ, SQ) keep their exact codes, and `source` is only read: its
    lists may be memory-mapped or on disk. Fast-scan (block) lists are merged by FAISS from a copy instead."""
    import faiss

    into, lists = ivf_of(target), ivf_of(source).invlists
    skip = np.zeros(0, dtype=np.int64) if skip is None else np.asarray(skip, dtype=np.int64)
    if isinstance(faiss.downcast_InvertedLists(lists), faiss.BlockInvertedLists):
        copy = faiss.clone_index(source)  # merge_from empties its source
        before = into.ntotal
        into.merge_from(ivf_of(copy), 0)
        if len(skip):
            try_remove(into, skip)
        return int(into.ntotal - before)
    added = 0
    for number in range(lists.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids_ptr, codes_ptr = lists.get_ids(number), lists.get_codes(number)
        try:
            ids = faiss.rev_swig_ptr(ids_ptr, size).astype(np.int64)
            codes = faiss.rev_swig_ptr(codes_ptr, size * lists.code_size).reshape(size, lists.code_size).copy()
        finally:
            lists.release_ids(number, ids_ptr)
            lists.release_codes(number, codes_ptr)
        keep = ~np.isin(ids, skip)
        ids, codes = np.ascontiguousarray(ids[keep]), np.ascontiguousarray(codes[keep])
        if len(ids):
            into.invlists.add_entries(number, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            added += len(ids)
    into.ntotal += added
    return added


def to_gpus(index):
    """`index` copied to every GPU (backend "faiss-gpu"); EmbedkitError where faiss-gpu or a GPU is missing."""
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        raise EmbedkitError("backend 'faiss-gpu' needs faiss-gpu and a CUDA GPU (pip install embedkit[gpu]); "
                            "or use backend 'torch'")
    return faiss.index_cpu_to_all_gpus(index)


def serialized_size(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def reserve_rows(index, count: int) -> None:
    """Allocate room for `count` vectors up front in flat-code storage (Flat, SQ, PQ, HNSW's storage).

    Adding chunk by chunk otherwise grows the code buffer by doubling, and each regrowth briefly holds the old
    and the new buffer: up to ~3× the embedding matrix at peak instead of 1×.
    """
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexFlatCodes) and inner.ntotal == 0:
        inner.codes.resize(count * inner.code_size)  # std::vector keeps the capacity after shrinking back
        inner.codes.resize(0)


def exact_top_k(chunks, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k row numbers for `queries` over (start_row, vectors) chunks, one chunk in memory at a time."""
    import faiss

    best_scores = np.full((len(queries), 0), 0, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start, part in chunks:
        flat = faiss.IndexFlatIP(part.shape[1]) if metric == "ip" else faiss.IndexFlatL2(part.shape[1])
        flat.add(np.ascontiguousarray(part, dtype=np.float32))
        scores, rows = flat.search(queries, min(k, len(part)))
        scores = scores if metric == "ip" else -scores
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows + start], axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)
    return best_rows


def calibrate_search(index, queries: np.ndarray, truth: np.ndarray, *, target_recall: float = 0.99) -> dict:
    """The cheapest nprobe (IVF) or efSearch (HNSW) whose recall@k on sample queries reaches `target_recall`.

    Recorded in the manifest as the index's default search parameters, so "default" means "calibrated on this
    corpus" rather than FAISS's fixed nprobe=1 / efSearch=16.
    """
    import faiss

    k = truth.shape[1]
    ivf = ivf_of(index)
    if ivf is not None:
        key, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < ivf.nlist] + [ivf.nlist]
    elif isinstance(unwrap(index), faiss.IndexHNSW):
        key, values = "ef_search", [16, 32, 64, 128, 256, 512, 1024]
    else:
        return {}
    chosen, recall = values[0], -1.0
    for value in values:
        _, found = search(index, queries, k, **{key: value})
        new = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))
        if new - recall < 0.002 and recall >= 0:
            break  # a plateau (lossy codes such as PQ cap recall): searching wider only costs time
        chosen, recall = value, new
        if recall >= target_recall:
            break
    return {key: int(chosen), "calibrated_recall": round(recall, 4), "target_recall": target_recall}


def faiss_row_ids(index) -> np.ndarray:
    """The row ids a FAISS index answers with: an IDMap's ids, an IVF index's list ids, else positions."""
    import faiss

    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(outer.id_map).astype(np.int64)
    ivf = ivf_of(index)
    if ivf is None:
        return np.arange(index.ntotal, dtype=np.int64)  # an imported plain index labels by position
    lists = ivf.invlists
    parts = [np.zeros(0, dtype=np.int64)]
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size:
            ids = lists.get_ids(number)
            try:
                parts.append(faiss.rev_swig_ptr(ids, size).astype(np.int64))
            finally:
                lists.release_ids(number, ids)
    return np.concatenate(parts)
