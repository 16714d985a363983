"""BM25 (pyserini and bm25s) and hybrid (dense MiniLM + BM25) on BEIR SciFact, test split.

Reference (pyserini's BEIR regressions, also in ../shared/data/README.md): BM25 k1=0.9 b=0.4, title+text as
one field: nDCG@10 0.679; as two fields: 0.665. all-MiniLM-L6-v2: 0.645.

    python benchmarks/bm25_scifact.py --dense /tmp/idx/scifact-minilm        # ~5 min on 2 busy cores
    python benchmarks/bm25_scifact.py --skip-pyserini                       # no Java: bm25s only

Writes benchmarks/bm25_scifact.md and benchmarks/bm25_scifact.json. Dense index: build it once with
`embedkit index build --corpus ../shared/data/scifact/corpus.jsonl --out /tmp/idx/scifact-minilm`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedkit.data import iter_documents, load_qrels, load_queries  # noqa: E402
from embedkit.eval import evaluate  # noqa: E402
from embedkit.hybrid import FusionConfig, fuse_runs  # noqa: E402
from embedkit.index import Index  # noqa: E402
from embedkit.lexical import BM25Settings, build_bm25_index  # noqa: E402
from embedkit.paths import shared_data_dir  # noqa: E402

REFERENCE = {"pyserini, one field": 0.679, "pyserini, two fields": 0.665, "dense MiniLM": 0.645}
DENSE_CANDIDATES = [Path("/tmp/idx/scifact-minilm"), ROOT / "indexes" / "scifact-all-MiniLM-L6-v2-Flat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=(shared_data_dir() or Path("../shared/data")) / "scifact")
    parser.add_argument("--dense", type=Path, help="dense MiniLM index of the SciFact corpus (default: first found of "
                        + ", ".join(map(str, DENSE_CANDIDATES)) + ")")
    parser.add_argument("--work", type=Path, help="where BM25 indexes are built (default: a temporary folder)")
    parser.add_argument("--skip-pyserini", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "bm25_scifact")
    args = parser.parse_args()

    queries_all = load_queries(args.data / "queries.jsonl")
    qrels = load_qrels(args.data / "qrels" / "test.tsv")
    queries = {qid: text for qid, text in queries_all.items() if qid in qrels}
    corpus = args.data / "corpus.jsonl"
    work = args.work or Path(tempfile.mkdtemp(prefix="bm25-scifact-"))
    rows: list[dict] = []
    runs: dict[str, dict] = {}

    def bm25(name: str, settings: BM25Settings) -> None:
        start = time.perf_counter()
        folder = build_bm25_index(iter_documents(corpus), work / name.replace(" ", "-").replace(",", ""), settings,
                                  overwrite=True, corpus=str(corpus))
        built = time.perf_counter() - start
        index = Index.load(folder)
        start = time.perf_counter()
        run = index.search_run(queries, k=1000)
        searched = time.perf_counter() - start
        record(name, run, build_s=built, search_s=searched, settings=settings.model_dump())

    def record(name: str, run: dict, **extra) -> None:
        metrics = evaluate(run, qrels, k_values=(10, 100, 1000))
        runs[name] = run
        rows.append({"system": name, "nDCG@10": metrics["nDCG@10"], "Recall@100": metrics["Recall@100"],
                     "MRR@10": metrics["MRR@10"], "reference_nDCG@10": REFERENCE.get(name), **extra})
        print(f"{name:<40} nDCG@10 {metrics['nDCG@10']:.4f}  R@100 {metrics['Recall@100']:.4f}", flush=True)

    if not args.skip_pyserini:
        bm25("pyserini, one field", BM25Settings(backend="pyserini", k1=0.9, b=0.4))
        bm25("pyserini, two fields", BM25Settings(backend="pyserini", k1=0.9, b=0.4,
                                                  fields={"contents": 1.0, "title": 1.0}))
    bm25("bm25s, one field", BM25Settings(backend="bm25s", k1=0.9, b=0.4))

    dense_path = args.dense or next((p for p in DENSE_CANDIDATES if (p / "manifest.json").exists()), None)
    if dense_path is not None:
        dense = Index.load(dense_path)
        start = time.perf_counter()
        record("dense MiniLM", dense.search_run(queries, k=1000), search_s=time.perf_counter() - start,
               index=str(dense_path))
        lexical = "pyserini, one field" if "pyserini, one field" in runs else "bm25s, one field"
        pair = [runs["dense MiniLM"], runs[lexical]]
        for label, config in [
            ("RRF k=60", FusionConfig(method="rrf", rrf_k=60, depth=1000)),
            ("RRF k=60, top-100 each", FusionConfig(method="rrf", rrf_k=60, depth=100)),
            ("interpolate min-max alpha=0.5", FusionConfig(method="interpolate", alpha=0.5, depth=1000)),
            ("interpolate z-score alpha=0.5", FusionConfig(method="interpolate", alpha=0.5, normalization="zscore",
                                                           depth=1000)),
        ]:
            record(f"hybrid dense + {lexical.split(',')[0]} ({label})", fuse_runs(pair, config, k=1000))
        if "bm25s, one field" in runs and lexical != "bm25s, one field":
            record("hybrid dense + bm25s (RRF k=60)",
                   fuse_runs([runs["dense MiniLM"], runs["bm25s, one field"]], FusionConfig(method="rrf"), k=1000))
    else:
        print("no dense index found: hybrid rows skipped (see --dense)", flush=True)
    write(args.out, rows, len(queries))


def write(out: Path, rows: list[dict], n_queries: int) -> None:
    out.with_suffix(".json").write_text(json.dumps({"queries": n_queries, "rows": rows}, indent=2) + "\n")
    lines = [
        "# BM25 and hybrid retrieval on BEIR SciFact (test split)",
        "",
        f"{n_queries} test queries, 5,183 documents; `python benchmarks/bm25_scifact.py`; "
        f"{platform.machine()}, Python {platform.python_version()}. Runs are cut at 1000 hits; "
        "times are wall-clock on a shared, heavily loaded 2-core machine (indicative only).",
        "",
        "| system | nDCG@10 | reference | R@100 | MRR@10 | build s | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = f"{row['reference_nDCG@10']:.3f}" if row.get("reference_nDCG@10") else ""
        build = f"{row['build_s']:.1f}" if "build_s" in row else ""
        search = f"{row['search_s']:.1f}" if "search_s" in row else ""
        lines.append(f"| {row['system']} | {row['nDCG@10']:.4f} | {ref} | {row['Recall@100']:.4f} | "
                     f"{row['MRR@10']:.4f} | {build} | {search} |")
    lines += ["", "BM25: k1=0.9, b=0.4. pyserini: Lucene's English analyzer (Porter stemmer, stopwords); bm25s: "
              "English stopwords and Snowball stemming (PyStemmer), Lucene's BM25 variant. Two fields: the title "
              "as its own Lucene field, queried with weight 1.0 beside `contents`. Hybrid: fusion of the full "
              "1000-hit runs (or the top 100 of each where stated).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
