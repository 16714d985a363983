"""Upserts and deletes vs a from-scratch rebuild, on SciFact MiniLM embeddings (cached by index_kinds.py scifact).

    python benchmarks/index_kinds.py scifact      # once: encodes and caches the vectors under /tmp
    python benchmarks/index_lifecycle.py          # writes benchmarks/index_lifecycle.md

Start from 80% of the corpus, add the other 20%, replace 5% of the documents with new vectors (upsert), delete
5%; then compare search results (the SciFact queries, k=10, each kind's default search parameters as recorded in
its manifest) with an index built from scratch on the final corpus, before and after `compact`.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from embedkit.data import iter_documents  # noqa: E402
from embedkit.encoding import EncoderSpec  # noqa: E402
from embedkit.index import Index, write_dense_index  # noqa: E402
from embedkit.index.lifecycle import add_vectors, compact_index, remove_documents  # noqa: E402
from embedkit.index.tune import pick_nlist, pick_pq_m  # noqa: E402
from embedkit.paths import shared_data_dir  # noqa: E402

CACHE = Path("/tmp/embedkit-bench")
WORK = CACHE / "lifecycle"


def top_ids(index, queries) -> list[list[str]]:
    return [[hit.id for hit in hits] for hits in index.search_vectors(queries, 10, with_text=False)]


def overlap(a, b) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def main() -> None:
    import faiss

    faiss.omp_set_num_threads(2)
    vectors = np.load(CACHE / "scifact-minilm-docs.npy")
    queries = np.load(CACHE / "scifact-minilm-queries.npy")
    docs = list(iter_documents(shared_data_dir() / "scifact" / "corpus.jsonl"))
    n, dim = vectors.shape
    spec = EncoderSpec(model="sentence-transformers/all-MiniLM-L6-v2", fingerprint="scifact-bench", pooling="mean",
                       normalize=True, dim=dim)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    initial, added = order[: int(0.8 * n)], order[int(0.8 * n) :]
    upserted = rng.choice(order, size=int(0.05 * n), replace=False)
    noise = vectors[upserted] + 0.3 * rng.standard_normal((len(upserted), dim)).astype(np.float32) / np.sqrt(dim)
    new_vectors = noise / np.linalg.norm(noise, axis=1, keepdims=True)
    remaining = np.setdiff1d(order, upserted)
    deleted = rng.choice(remaining, size=int(0.05 * n), replace=False)
    final = vectors.copy()
    final[upserted] = new_vectors
    keep = np.setdiff1d(np.arange(n), deleted)
    nlist = pick_nlist(len(initial))
    factories = ["Flat", "HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},PQ{pick_pq_m(dim) // 4}", "SQ8"]
    if "--no-pq" in sys.argv:  # PQ training dominates the run time on a shared 2-core machine
        factories = [f for f in factories if "PQ" not in f]
    if WORK.exists():
        shutil.rmtree(WORK)
    exact = Index.load(write_dense_index(WORK / "exact", final[keep], [docs[i] for i in keep], spec))
    truth = top_ids(exact, queries)
    lines = []
    for factory in factories:
        name = factory.replace(",", "_")
        started = time.perf_counter()
        live = write_dense_index(WORK / f"live-{name}", vectors[initial], [docs[i] for i in initial], spec, factory=factory)
        add_vectors(live, [docs[i] for i in added], vectors[added])
        add_vectors(live, [docs[i] for i in upserted], new_vectors)
        remove_documents(live, [docs[i].id for i in deleted])
        update_s = time.perf_counter() - started
        scratch = write_dense_index(WORK / f"scratch-{name}", final[keep], [docs[i] for i in keep], spec, factory=factory)
        live_index, scratch_index = Index.load(live), Index.load(scratch)
        got, want = top_ids(live_index, queries), top_ids(scratch_index, queries)
        identical = float(np.mean([a == b for a, b in zip(got, want, strict=True)]))
        masked = len(live_index.deleted_rows)
        compact_index(live)
        compacted = top_ids(Index.load(live), queries)
        lines.append(
            f"| {factory} | {live_index.manifest.search.model_dump(exclude_none=True) or '-'} | {masked} | {identical:.4f} | "
            f"{overlap(got, want):.4f} | {overlap(got, truth):.4f} | {overlap(want, truth):.4f} | "
            f"{overlap(compacted, want):.4f} | {update_s:.1f} |"
        )
        print(lines[-1], flush=True)
    text = [
        "# Index updates vs a from-scratch rebuild (SciFact, all-MiniLM-L6-v2 vectors)",
        "",
        f"{n:,} SciFact documents (dim {dim}), {len(queries)} SciFact queries, k=10. Start from {len(initial):,} "
        f"documents (80%), add {len(added):,}, upsert {len(upserted):,} existing ids with new vectors, delete "
        f"{len(deleted):,}; final corpus {len(keep):,}. Every index searched with the default search parameters "
        f"recorded in its manifest. Machine: {platform.machine()}, {os.cpu_count()} shared cores. "
        f"Command: `python benchmarks/index_lifecycle.py {' '.join(sys.argv[1:])}`.",
        "",
        "Columns: *identical* = fraction of queries whose top-10 id list equals the rebuild's exactly; *vs rebuild* = "
        "recall@10 of the updated index against the rebuilt index of the same kind; *vs exact* = against exact search "
        "on the final corpus; *compacted vs rebuild* = after `embedkit index compact`.",
        "",
        "| factory | default search | masked rows | identical | updated vs rebuild | updated vs exact | rebuild vs exact | compacted vs rebuild | update s |",
        "|---|---|---|---|---|---|---|---|---|",
        *lines,
    ]
    (HERE / "index_lifecycle.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
