"""Pick an index knowingly: recall@k against exact search, queries/s, build time and size per index kind.

    from embedkit.index.tune import default_candidates, tune_vectors, format_table
    results = tune_vectors(vectors, queries, default_candidates(len(vectors), vectors.shape[1]))
    print(format_table(results))

`embedkit index tune indexes/NAME` runs this on an index's own vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedkit.errors import EmbedkitError
from embedkit.index.faiss_ops import (
    add_vectors,
    create_index,
    serialized_size,
    set_search_parameters,
    train_index,
)


class Candidate(BaseModel):
    """One index kind to try, with the search-parameter values to sweep."""

    model_config = ConfigDict(frozen=True)

    name: str
    factory: str
    nprobe: list[int] = Field(default_factory=list)
    ef_search: list[int] = Field(default_factory=list)


class TuneResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    factory: str
    params: str
    recall: float
    qps: float
    build_s: float
    size_mb: float


PQ_CODES = 256  # codes per 8-bit PQ sub-quantizer: its k-means needs at least this many training vectors


def pick_nlist(count: int) -> int:
    """~4·sqrt(n) lists (a power of two), but at least ~39 training points per list as FAISS advises."""
    target = 4 * math.sqrt(count)
    nlist = 2 ** max(2, round(math.log2(max(target, 4))))
    while nlist > 4 and nlist * 39 > count:
        nlist //= 2
    return nlist


def pick_pq_m(dim: int) -> int:
    """PQ sub-quantizers: dim/4 (8 bytes per 32 dims), a divisor of dim, at most 64."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_candidates(count: int, dim: int, *, nlist: int | None = None) -> list[Candidate]:
    """Flat, HNSW32, IVF-Flat, IVF-PQ and SQ8 with parameter sweeps that suit `count` vectors.

    IVF-PQ needs 256 training vectors (one per code of its 8-bit sub-quantizers): below that it is left out.
    """
    nlist = nlist or pick_nlist(count)
    probes = sorted({p for p in (1, 4, 8, 16, 32, 64, 128) if p <= nlist})
    candidates = [
        Candidate(name="Flat", factory="Flat"),
        Candidate(name="HNSW32", factory="HNSW32", ef_search=[16, 32, 64, 128, 256]),
        Candidate(name="IVF-Flat", factory=f"IVF{nlist},Flat", nprobe=probes),
        Candidate(name="IVF-PQ", factory=f"IVF{nlist},PQ{pick_pq_m(dim)}", nprobe=probes),
        Candidate(name="SQ8", factory="SQ8"),
    ]
    return [c for c in candidates if c.name != "IVF-PQ" or count >= PQ_CODES]


def exact_neighbors(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    for start in range(0, len(vectors), 262_144):
        index.add(np.ascontiguousarray(vectors[start : start + 262_144], dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


def tune_vectors(vectors: np.ndarray, queries: np.ndarray, candidates: Sequence[Candidate], *, k: int = 10,
                 metric: str = "ip", train_sample: int = 100_000, truth: np.ndarray | None = None,
                 min_time: float = 0.2, log=None) -> list[TuneResult]:
    """Build each candidate on `vectors`, search `queries` with every swept parameter, measure everything."""
    if len(vectors) < k:
        raise EmbedkitError(f"need at least k={k} vectors to tune, got {len(vectors)}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_neighbors(vectors, queries, k, metric) if truth is None else truth
    rows = np.arange(len(vectors), dtype=np.int64)
    results: list[TuneResult] = []
    for candidate in candidates:
        started = time.perf_counter()
        index = create_index(vectors.shape[1], candidate.factory, metric)
        train_index(index, vectors, sample_size=train_sample)
        add_vectors(index, vectors, rows)
        build_s = time.perf_counter() - started
        size_mb = serialized_size(index) / 2**20
        settings: list[tuple[str | None, int | None]] = [("nprobe", v) for v in candidate.nprobe]
        settings += [("efSearch", v) for v in candidate.ef_search]
        settings = settings or [(None, None)]
        for key, value in settings:
            set_search_parameters(index, nprobe=value if key == "nprobe" else None,
                                  ef_search=value if key == "efSearch" else None)
            found, qps = _timed_search(index, queries, k, min_time)
            result = TuneResult(name=candidate.name, factory=candidate.factory, params=f"{key}={value}" if key else "-",
                                recall=recall_at_k(found, truth), qps=qps, build_s=build_s, size_mb=size_mb)
            results.append(result)
            if log is not None:
                log(format_row(result))
        del index
    return results


def _timed_search(index, queries: np.ndarray, k: int, min_time: float) -> tuple[np.ndarray, float]:
    """Batch search repeated until `min_time` has passed, so fast indexes are timed reliably."""
    started = time.perf_counter()
    _, found = index.search(queries, k)
    runs, elapsed = 1, time.perf_counter() - started
    while elapsed < min_time:
        started = time.perf_counter()
        _, found = index.search(queries, k)
        elapsed += time.perf_counter() - started
        runs += 1
    return found, runs * len(queries) / elapsed


def tune_index(path: str | Path, *, queries: np.ndarray | None = None, num_queries: int = 1000,
               candidates: Sequence[Candidate] | None = None, k: int = 10, seed: int = 0, log=None) -> list[TuneResult]:
    """`tune_vectors` on an index folder's own document vectors; queries default to a sample of documents."""
    from embedkit.index.base import Index
    from embedkit.index.dense import DenseIndex

    index = Index.load(path)
    if not isinstance(index, DenseIndex):
        raise EmbedkitError(f"{path} is a {index.manifest.kind} index; tuning needs a dense index")
    vectors = index.vectors(index.live_rows())
    if queries is None:
        rng = np.random.default_rng(seed)
        queries = vectors[rng.choice(len(vectors), size=min(num_queries, len(vectors)), replace=False)]
    candidates = list(candidates or default_candidates(len(vectors), vectors.shape[1]))
    return tune_vectors(vectors, queries, candidates, k=k, metric=index.manifest.metric or "ip", log=log)


def format_row(result: TuneResult) -> str:
    return (f"| {result.name} | {result.factory} | {result.params} | {result.recall:.4f} | {result.qps:,.0f} | "
            f"{result.build_s:.1f} | {result.size_mb:.1f} |")


def format_table(results: Sequence[TuneResult], k: int = 10) -> str:
    lines = [f"| index | factory | search params | recall@{k} | QPS | build s | size MB |", "|---|---|---|---|---|---|---|"]
    lines += [format_row(result) for result in results]
    return "\n".join(lines)
