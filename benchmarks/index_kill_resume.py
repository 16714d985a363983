"""Kill-and-resume: SIGKILL `embedkit encode` at random points, restart it, compare with an uninterrupted run.

    python benchmarks/index_kill_resume.py --trials 3     # writes benchmarks/index_kill_resume.md

Uses a tiny random-init encoder so trials are quick; identical means every part's vectors file has the same
sha256, the document files are byte-identical, and the FAISS index built from the shards is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from embedkit.encoding.shards import checkpoint_path, open_shards  # noqa: E402
from embedkit.index.lifecycle import merge_indexes  # noqa: E402
from embedkit.training.tiny import _WORDS, build_tiny_bert  # noqa: E402

WORK = Path("/tmp/embedkit-bench/kill-resume")


def encode_command(corpus: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "embedkit", "encode", "--corpus", str(corpus), "--model", str(model), "--out",
            str(out), "--part-size", "50", "--batch-size", "16", "--device", "cpu", "-q"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--docs", type=int, default=3000)
    args = parser.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    model = build_tiny_bert(WORK / "tiny", seed=0, hidden_size=64, layers=2)
    rng = np.random.default_rng(0)
    corpus = WORK / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for i in range(args.docs):
            text = " ".join(rng.choice(_WORDS, int(rng.integers(5, 40))))
            handle.write(json.dumps({"_id": f"doc{i}", "text": text}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(encode_command(corpus, model, WORK / "clean"), env=env, check=True)
    clean_index = merge_indexes([WORK / "clean"], WORK / "index-clean")
    total_parts = len(open_shards(WORK / "clean").parts)
    rows = []
    for trial in range(args.trials):
        out = WORK / f"killed-{trial}"
        command = encode_command(corpus, model, out)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not checkpoint_path(out, 0, 1).exists() and process.poll() is None:
            time.sleep(0.01)
        delay = random.Random(trial).uniform(0.0, 3.0)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = json.loads(checkpoint_path(out, 0, 1).read_text())
        parts_at_kill = len(state["parts"])
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        resume_s = time.perf_counter() - started
        index = merge_indexes([out], WORK / f"index-{trial}")
        same_parts = open_shards(out).parts == open_shards(WORK / "clean").parts
        same_docs = all((out / p.name).read_bytes() == p.read_bytes() for p in (WORK / "clean").glob("part-*.jsonl"))
        same_index = (index / "index.faiss").read_bytes() == (clean_index / "index.faiss").read_bytes()
        rows.append(f"| {trial} | {process.returncode} | {delay:.2f} | {parts_at_kill}/{total_parts} | "
                    f"{resume_s:.1f} | {same_parts} | {same_docs} | {same_index} |")
        print(rows[-1], flush=True)
    lines = [
        "# Kill-and-resume of `embedkit encode`",
        "",
        f"{args.docs:,} synthetic documents, parts of 50, tiny random-init BERT (2 layers, hidden 64). Each trial "
        "starts the encode, waits for its first checkpoint, sleeps a random delay, sends SIGKILL, restarts the same "
        "command, then compares with an uninterrupted run. Command: "
        f"`python benchmarks/index_kill_resume.py --trials {args.trials} --docs {args.docs}`.",
        "",
        "| trial | exit code at kill | delay after 1st checkpoint s | parts done at kill | resume s | same vectors (sha256 per part) | same documents | byte-identical index.faiss |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    (HERE / "index_kill_resume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
