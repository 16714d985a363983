"""What a BM25 update costs as the index grows (issue 24): `index add` of 10 documents, `index remove` of 1, the
next open, and `compact`, against a rebuild, for bm25s and pyserini. Whole commands (`python -m embedkit`),
so process start and imports (and the JVM for pyserini) are included, as in the issue's table; `--in-process`
times the same calls in one process instead (imports and the JVM start excluded), which shows how the update
itself grows on a busy machine.

    python benchmarks/bm25_updates.py --sizes 20000 80000 --out benchmarks/bm25_updates.md
    python benchmarks/bm25_updates.py --in-process --sizes 10000 40000 160000

Documents are synthetic (random words from a 5000-word vocabulary, 40 to 120 words each), so the numbers
show how costs grow, not what a real corpus costs. The machine's load average is recorded with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus(path: Path, count: int, seed: int, prefix: str = "d") -> Path:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            words = rng.choices(vocabulary, k=rng.randint(40, 120))
            handle.write(json.dumps({"_id": f"{prefix}{i}", "title": "", "text": " ".join(words)}) + "\n")
    return path


def timed(*args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "embedkit", *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise SystemExit(f"embedkit {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def measure_in_process(backend: str, size: int, work: Path) -> dict[str, float]:
    from embedkit.data import iter_documents
    from embedkit.index import Index
    from embedkit.lexical import BM25Settings, build_bm25_index
    from embedkit.lexical.update import add_documents, compact_index, remove_documents, set_merge_policy

    docs = corpus(work / f"corpus-{size}.jsonl", size, seed=size)
    new = corpus(work / "new.jsonl", 10, seed=1, prefix="new")
    index = work / f"{backend}-{size}"
    row: dict[str, float] = {}

    def clock(name: str, call) -> None:
        started = time.perf_counter()
        call()
        row[name] = time.perf_counter() - started

    clock("build", lambda: build_bm25_index(iter_documents(docs), index, BM25Settings(backend=backend), overwrite=True))
    clock("open+search", lambda: Index.load(index).search("w1 w2 w3", k=10))
    set_merge_policy(index, never=True)
    clock("add 10", lambda: add_documents(index, iter_documents(new)))
    clock("remove 1", lambda: remove_documents(index, ["d7"]))
    opened: list[Index] = []

    def open_and_search() -> None:
        opened.append(Index.load(index))
        opened[0].search("w1 w2 w3", k=10)

    clock("open+search after", open_and_search)
    # a query alone on the opened index: an updated bm25s index scores its segments' postings
    clock("search after", lambda: opened[0].search("w4 w5 w6", k=10))
    clock("compact", lambda: compact_index(index))
    clock("open+search compacted", lambda: Index.load(index).search("w1 w2 w3", k=10))
    return row


def measure(backend: str, size: int, work: Path) -> dict[str, float]:
    docs = corpus(work / f"corpus-{size}.jsonl", size, seed=size)
    new = corpus(work / "new.jsonl", 10, seed=1, prefix="new")
    (work / "ids.txt").write_text("d7\n")
    index = work / f"{backend}-{size}"
    row = {"build": timed("index", "build", "--kind", "bm25", "--backend", backend, "--corpus", str(docs),
                          "--out", str(index), "--overwrite", "-q")}
    row["search"] = timed("search", str(index), "w1 w2 w3", "-q")
    # merge policy off, so the update itself is timed (not a compaction it triggers)
    from embedkit.lexical.update import set_merge_policy

    set_merge_policy(index, never=True)
    row["add 10"] = timed("index", "add", str(index), "--corpus", str(new), "-q")
    row["remove 1"] = timed("index", "remove", str(index), "--ids", str(work / "ids.txt"))
    row["search after"] = timed("search", str(index), "w1 w2 w3", "-q")
    row["compact"] = timed("index", "compact", str(index))
    row["search compacted"] = timed("search", str(index), "w1 w2 w3", "-q")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--backends", nargs="+", default=["bm25s", "pyserini"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--in-process", action="store_true", help="time the calls in this process (no imports)")
    args = parser.parse_args()
    if args.in_process:  # the JVM and pyserini start before anything is timed
        from embedkit.lexical.pyserini_backend import _lucene_searcher_class

        if "pyserini" in args.backends:
            _lucene_searcher_class()
    started_load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for size in args.sizes:
                row = (measure_in_process if args.in_process else measure)(backend, size, Path(tmp))
                rows.append((backend, size, row))
                print(backend, size, {k: round(v, 2) for k, v in row.items()}, flush=True)
    columns = list(rows[0][2])
    what = "seconds per call, in one process" if args.in_process else "seconds per whole command"
    lines = [f"Load average (1 min) before/after: {started_load:.1f}/{os.getloadavg()[0]:.1f}; {what}.", "",
             "| backend | documents | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    lines += [f"| {b} | {n:,} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |" for b, n, row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
