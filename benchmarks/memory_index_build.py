"""Peak memory of `embedkit index build` at 50k, 100k and 200k synthetic documents streamed from disk.

    python benchmarks/memory_index_build.py            # writes benchmarks/memory_index_build.md

A cheap random-init encoder (1-layer BERT, hidden 32, 16 tokens, plus a Dense layer to 384 dims) keeps the run bounded;
the point is memory, not quality. Each build runs in its own process; peak RSS comes from wait4's ru_maxrss.
If the build streams, peak RSS grows by the embedding matrix (n × 384 × 4 bytes: the Flat FAISS index) and
not with the corpus text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
WORK = Path("/tmp/embedkit-bench/memory")
DIM = 384


def build_encoder(path: Path) -> Path:
    if (path / "modules.json").exists():
        return path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from embedkit.training.tiny import build_tiny_bert

    tiny = build_tiny_bert(path.with_name("tiny-base"), seed=0, hidden_size=32, layers=1, normalize=False,
                           max_seq_length=32)
    base = SentenceTransformer(str(tiny), device="cpu")
    modules = [base[0], base[1], Dense(in_features=32, out_features=DIM), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(path), create_model_card=False)
    return path


def write_corpus(path: Path, count: int) -> Path:
    if path.exists():
        return path
    from embedkit.training.tiny import _WORDS

    rng = np.random.default_rng(count)
    words = np.array(_WORDS)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = " ".join(words[rng.integers(0, len(words), int(rng.integers(4, 12)))])
            handle.write(json.dumps({"_id": f"doc{i}", "title": f"title {i}", "text": text}) + "\n")
    tmp.rename(path)
    return path


def peak_rss_of(commands: list[list[str]]) -> list[tuple[int, float]]:
    """(peak RSS in bytes, seconds) of each command, run as concurrent child processes (RSS is per process)."""
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for command in commands]
    results = []
    for command, process in zip(commands, processes, strict=True):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
        results.append((usage.ru_maxrss * 1024, time.perf_counter() - started))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50000,100000,200000")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = build_encoder(WORK / "tiny-384")
    rows = []
    counts = [int(size) for size in args.sizes.split(",")]
    commands = []
    for count in counts:
        corpus = write_corpus(WORK / f"corpus-short-{count}.jsonl", count)
        commands.append([sys.executable, "-m", "embedkit", "index", "build", "--corpus", str(corpus), "--model",
                         str(model), "--out", str(WORK / f"index-{count}"), "--overwrite", "--device", "cpu",
                         "--batch-size", "256", "--max-length", "16", "-q"])
    for count, (rss, seconds) in zip(counts, peak_rss_of(commands), strict=True):
        corpus, out = WORK / f"corpus-short-{count}.jsonl", WORK / f"index-{count}"
        faiss_bytes = (out / "index.faiss").stat().st_size
        rows.append({"docs": count, "corpus_mb": corpus.stat().st_size / 2**20, "peak_rss_mb": rss / 2**20,
                     "matrix_mb": count * DIM * 4 / 2**20, "faiss_mb": faiss_bytes / 2**20, "seconds": seconds})
        print(rows[-1], flush=True)
    base = rows[0]
    lines = [
        "# Peak memory of `embedkit index build` (Flat, dim 384)",
        "",
        f"Synthetic jsonl corpora (title + 4–12 words per document) streamed from disk; tiny random-init encoder "
        f"(1-layer BERT hidden 32, max 16 tokens → Dense 384, normalized), batch 256, chunk 8192 documents. Machine: "
        f"{platform.machine()}, {os.cpu_count()} shared cores. Peak RSS from wait4 (ru_maxrss) of the "
        f"`embedkit index build` process (the three builds ran concurrently; RSS is per process, build times overlap). "
        "Command: `python benchmarks/memory_index_build.py`.",
        "",
        "| documents | corpus on disk MB | peak RSS MB | embedding matrix MB (n×384×4) | Δ RSS vs first | Δ matrix vs first | Δ RSS − Δ matrix | build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d_rss, d_matrix = row["peak_rss_mb"] - base["peak_rss_mb"], row["matrix_mb"] - base["matrix_mb"]
        lines.append(f"| {row['docs']:,} | {row['corpus_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['matrix_mb']:.0f} | "
                     f"{d_rss:+.0f} | {d_matrix:+.0f} | {d_rss - d_matrix:+.0f} | {row['seconds']:.0f} |")
    last = rows[-1]
    growth = (last["peak_rss_mb"] - base["peak_rss_mb"]) / max(last["matrix_mb"] - base["matrix_mb"], 1e-9)
    lines += ["", f"From {base['docs']:,} to {last['docs']:,} documents peak RSS grew by "
              f"{last['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB while the embedding matrix grew by "
              f"{last['matrix_mb'] - base['matrix_mb']:.0f} MB (ratio {growth:.2f}); the corpus text grew by "
              f"{last['corpus_mb'] - base['corpus_mb']:.0f} MB on disk and is not held in memory."]
    (HERE / "memory_index_build.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
