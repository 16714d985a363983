"""Checkpointed sharded encoding: kill -9 and resume gives identical output; sharding does not change the index."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.encoding import Encoder, EncoderConfig
from embedkit.encoding.shards import checkpoint_path, encode_shards, open_shards
from embedkit.errors import EmbedkitError
from embedkit.index import Index
from embedkit.index.lifecycle import merge_indexes
from embedkit.training.tiny import build_tiny_bert

pytestmark = pytest.mark.slow  # encoding subprocesses

WORDS = "protein cell gene cancer virus dna rna study patients treatment disease blood brain heart risk".split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("model") / "tiny", seed=5, hidden_size=32, layers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(800):
            words = " ".join(rng.choice(WORDS, int(rng.integers(3, 15))))
            handle.write(json.dumps({"_id": f"doc{i}", "title": f"t{i % 7}", "text": words}) + "\n")
    return path


def encoder_for(model: Path) -> Encoder:
    return Encoder(EncoderConfig(model=str(model), batch_size=8, device="cpu"))


def test_kill_and_resume_is_identical_to_an_uninterrupted_run(tmp_path, tiny_model, corpus):
    command = [sys.executable, "-m", "embedkit", "encode", "--corpus", str(corpus), "--model", str(tiny_model),
               "--out", str(tmp_path / "killed"), "--part-size", "25", "--batch-size", "8", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first_checkpoint = checkpoint_path(tmp_path / "killed", 0, 1)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))  # a random point after encoding started
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    done_before = json.loads(first_checkpoint.read_text())
    assert not done_before["done"] and 0 < len(done_before["parts"]) < 32, "the kill must land mid-encode"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encode_shards(corpus, tmp_path / "clean", encoder_for(tiny_model), part_size=25)
    finally:
        torch.set_num_threads(threads)
    killed, clean = open_shards(tmp_path / "killed"), open_shards(tmp_path / "clean")
    assert killed.parts == clean.parts  # same parts, same counts, same sha256 of every vectors file
    assert killed.num_docs == 800
    for part in clean.parts:
        name = f"part-{part:08d}.jsonl"
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    a = merge_indexes([tmp_path / "killed"], tmp_path / "index-killed")
    b = merge_indexes([tmp_path / "clean"], tmp_path / "index-clean")
    assert (a / "index.faiss").read_bytes() == (b / "index.faiss").read_bytes()
    assert list(Index.load(a).docstore.iter_documents()) == list(Index.load(b).docstore.iter_documents())


def test_sharded_workers_and_float16(tmp_path, tiny_model, corpus):
    encoder = encoder_for(tiny_model)
    small = tmp_path / "small.jsonl"
    small.write_text("".join(corpus.read_text().splitlines(keepends=True)[:120]))
    for shard_id in (2, 0):
        encode_shards(small, tmp_path / "sharded", encoder, shard_id=shard_id, num_shards=3, part_size=10)
    with pytest.raises(EmbedkitError, match="not finished"):
        open_shards(tmp_path / "sharded")
    encode_shards(small, tmp_path / "sharded", encoder, shard_id=1, num_shards=3, part_size=10)
    encode_shards(small, tmp_path / "single", encoder, part_size=10)
    sharded = merge_indexes([tmp_path / "sharded"], tmp_path / "index-sharded")
    single = merge_indexes([tmp_path / "single"], tmp_path / "index-single")
    assert (sharded / "index.faiss").read_bytes() == (single / "index.faiss").read_bytes()

    encode_shards(small, tmp_path / "half", encoder, part_size=10, dtype="float16")
    assert np.load(tmp_path / "half" / "part-00000000.npy").dtype == np.float16
    half = Index.load(merge_indexes([tmp_path / "half"], tmp_path / "index-half"))
    full = Index.load(single)
    rows = full.live_rows()
    np.testing.assert_allclose(half.vectors(rows), full.vectors(rows), atol=2e-3)
    with pytest.raises(EmbedkitError, match="different encode job"):
        encode_shards(small, tmp_path / "half", encoder, part_size=10, dtype="float32")


def test_cli_encode_then_merge(tmp_path, tiny_model, corpus, capsys):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(corpus.read_text().splitlines(keepends=True)[:40]))
    base = ["encode", "--corpus", str(small), "--model", str(tiny_model), "--out", str(tmp_path / "shards"),
            "--part-size", "10", "--device", "cpu", "-q", "--num-shards", "2"]
    assert main([*base, "--shard-id", "0"]) == 0
    assert main([*base, "--shard-id", "1", "--index", str(tmp_path / "index")]) == 0
    assert Index.load(tmp_path / "index").manifest.num_docs == 40
    assert main(["index", "merge", str(tmp_path / "shards"), "--out", str(tmp_path / "again"),
                 "--index-factory", "HNSW8"]) == 0
    assert main([*base, "--shard-id", "5"]) == 2
