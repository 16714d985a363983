"""FAISS operations shared by every dense index: create from a factory string, train, add, tune search."""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError

METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}


def faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise EmbedkitError(f"unknown metric '{metric}' (use {' or '.join(METRICS)})")
    return getattr(faiss, METRICS[metric])


def create_index(dim: int, factory: str, metric: str):
    """An empty index from any FAISS index-factory string, wrapped so it stores our integer row ids."""
    import faiss

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
