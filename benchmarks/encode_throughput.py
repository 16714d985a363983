"""Encoding throughput: embedkit's streaming encoder vs plain `SentenceTransformer.encode`.

Same model object, batch size and max length; both encode SciFact's 5,183 documents (title + text).
Runs alternate (A B A B …) so that load on the machine affects both alike; the best round of each counts.

    python benchmarks/encode_throughput.py [--rounds 2] [--batch-size 64] [--limit N]

Writes benchmarks/encode_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from embedkit.data import count_documents, iter_documents
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.encoding import Encoder, EncoderConfig
from embedkit.paths import shared_data_dir

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--limit", type=int, help="encode only the first N documents")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        print("../shared/data is not available", file=sys.stderr)
        return 2
    corpus = data / "scifact" / "corpus.jsonl"
    encoder = Encoder(EncoderConfig(batch_size=args.batch_size, max_length=args.max_length))
    model = encoder.model
    total = count_documents(corpus) if args.limit is None else args.limit

    def embedkit_run() -> int:
        documents = iter_documents(corpus)
        if args.limit:
            documents = (doc for _, doc in zip(range(args.limit), documents, strict=False))
        return sum(len(vectors) for _, vectors in encoder.iter_encoded(documents, total=total, quiet=True))

    def plain_run() -> int:
        # The baseline as users write it: read all texts, then one encode call.
        texts = [doc.joined() for doc in iter_documents(corpus)][: args.limit]
        vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return len(vectors)

    best = {"embedkit": 0.0, "SentenceTransformer.encode": 0.0}
    rounds: list[tuple[int, str, float, float]] = []
    runs = {"embedkit": embedkit_run, "SentenceTransformer.encode": plain_run}
    for round_number in range(args.rounds):
        order = list(runs) if round_number % 2 == 0 else list(reversed(runs))
        for name in order:
            started = time.perf_counter()
            count = runs[name]()
            rate = count / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
            rounds.append((round_number + 1, name, rate, os.getloadavg()[0]))
            print(f"round {round_number + 1} {name:<28} {rate:8.1f} docs/s")
    # Best-of-rounds for each side: the round least disturbed by other load on the machine.
    ratio = best["embedkit"] / best["SentenceTransformer.encode"]
    print(f"ratio embedkit / plain = {ratio:.3f}")
    lines = [
        "# Encoding throughput (SciFact corpus, all-MiniLM-L6-v2)",
        "",
        "`python benchmarks/encode_throughput.py` — best of alternating rounds, same model object.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {encoder.device}",
        f"- documents: {total}, batch size {args.batch_size}, max length {args.max_length}, rounds {args.rounds}",
        "",
        "| encoder | docs/s |",
        "|---|---|",
        *[f"| {name} | {rate:.1f} |" for name, rate in best.items()],
        f"| **ratio** (embedkit / plain) | **{ratio:.3f}** |",
        "",
        "Every round (1-minute load average after the run; other jobs shared the machine when it is high):",
        "",
        "| round | encoder | docs/s | load |",
        "|---|---|---|---|",
        *[f"| {r} | {name} | {rate:.1f} | {load:.1f} |" for r, name, rate, load in rounds],
    ]
    (HERE / "encode_throughput.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
