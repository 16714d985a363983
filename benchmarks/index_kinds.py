"""Index-kind benchmark: recall@10 vs exact search, QPS, build time and size for Flat, HNSW, IVF-Flat, IVF-PQ, SQ8.

    python benchmarks/index_kinds.py synthetic --count 1000000 --dim 64      # clustered Gaussian vectors
    python benchmarks/index_kinds.py scifact                                  # SciFact corpus, bundled MiniLM

Writes benchmarks/index_kinds_<dataset>.md. SciFact embeddings are cached under /tmp so reruns skip encoding.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedkit.index.tune import default_candidates, format_table, tune_vectors  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path("/tmp/embedkit-bench")


def clustered(count: int, dim: int, clusters: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres; returns (vectors, centres) built chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        part = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        out[start : start + n] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out, centres


def synthetic(args) -> tuple[np.ndarray, np.ndarray, str]:
    vectors, _ = clustered(args.count + args.queries, args.dim, args.clusters, args.spread, seed=0)
    description = (f"{args.count:,} synthetic unit vectors, dim {args.dim}, {args.clusters} Gaussian clusters "
                   f"(spread {args.spread}); {args.queries} held-out queries from the same distribution; inner product")
    return vectors[: args.count], vectors[args.count :], description


def scifact(args) -> tuple[np.ndarray, np.ndarray, str]:
    from embedkit.data import load_queries
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.paths import shared_data_dir

    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is not available")
    CACHE.mkdir(parents=True, exist_ok=True)
    docs_cache, queries_cache = CACHE / "scifact-minilm-docs.npy", CACHE / "scifact-minilm-queries.npy"
    if args.from_index and not docs_cache.exists():
        # an index the CLI already built with the bundled MiniLM (rows are in corpus order): reuse its vectors
        from embedkit.index import Index

        index = Index.load(args.from_index)
        if index.manifest.num_docs != 5183 or "MiniLM-L6" not in index.spec.model or not index.vectors_exact:
            sys.exit(f"{args.from_index} is not an exact SciFact all-MiniLM-L6-v2 index")
        np.save(docs_cache, index.vectors(index.live_rows()))
    if not docs_cache.exists() or not queries_cache.exists():
        import torch

        from embedkit.encoding.shards import encode_shards, open_shards

        torch.set_num_threads(2)
        encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
        # checkpointed parts: a benchmark killed while encoding resumes where it stopped
        shards = CACHE / "scifact-minilm-shards"
        started = time.perf_counter()
        if not docs_cache.exists():
            encode_shards(data / "scifact" / "corpus.jsonl", shards, encoder, part_size=256)
            np.save(docs_cache, np.concatenate([vectors for _, vectors in open_shards(shards).iter_chunks()]))
            print(f"encoded the corpus in {time.perf_counter() - started:.0f}s", flush=True)
        np.save(queries_cache, encoder.encode_queries(list(load_queries(data / "scifact" / "queries.jsonl").values())))
    vectors, queries = np.load(docs_cache), np.load(queries_cache)
    description = (f"SciFact corpus ({len(vectors):,} docs) encoded with the bundled all-MiniLM-L6-v2 (dim 384, normalized); "
                   f"{len(queries)} SciFact queries; inner product")
    return vectors, queries, description


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["synthetic", "scifact"])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nlist", type=int, help="IVF lists (default: ~4·sqrt(n))")
    parser.add_argument("--train-sample", type=int, default=100_000)
    parser.add_argument("--kinds", default="Flat,HNSW32,IVF-Flat,IVF-PQ,SQ8", help="comma-separated subset")
    parser.add_argument("--from-index", help="scifact: take document vectors from an exact (Flat) MiniLM index folder")
    parser.add_argument("--out", help="results file (default benchmarks/index_kinds_<dataset>.md)")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    vectors, queries, description = synthetic(args) if args.dataset == "synthetic" else scifact(args)
    candidates = [c for c in default_candidates(len(vectors), vectors.shape[1], nlist=args.nlist)
                  if c.name in args.kinds.split(",")]
    started = time.perf_counter()
    results = tune_vectors(vectors, queries, candidates, train_sample=args.train_sample,
                           log=lambda line: print(line, flush=True))
    table = format_table(results)
    flat_qps = next(r.qps for r in results if r.name == "Flat")
    good = [r for r in results if r.name in ("HNSW32", "IVF-Flat") and r.recall >= 0.95]
    best = max(good, key=lambda r: r.qps) if good else None
    verdict = (f"Fastest HNSW/IVF setting with recall@10 ≥ 0.95: **{best.name} {best.params}**, recall {best.recall:.4f}, "
               f"{best.qps:,.0f} QPS = **{best.qps / flat_qps:.1f}× Flat** ({flat_qps:,.0f} QPS)." if best
               else "No HNSW/IVF setting reached recall@10 ≥ 0.95.")
    out = Path(args.out) if args.out else HERE / f"index_kinds_{args.dataset}.md"
    out.write_text(
        f"# Index kinds on {args.dataset}\n\n{description}.\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, FAISS {faiss.__version__} CPU, "
        f"{args.threads} OpenMP threads. QPS = batch search of all queries (k=10), repeated ≥0.2 s. Recall@10 against "
        f"exact (Flat) search. Build = create + train (≤{args.train_sample:,} sample) + add. Size = serialized FAISS index. "
        f"No GPU was available in this session: GPU numbers not recorded.\n\n"
        f"Command: `python benchmarks/index_kinds.py {' '.join(sys.argv[1:])}` (total {time.perf_counter() - started:.0f}s)\n\n"
        f"{table}\n\n{verdict}\n"
    )
    print(verdict)


if __name__ == "__main__":
    main()
