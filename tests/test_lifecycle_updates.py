"""Index lifecycle: upserts and deletes give the same results as a rebuild; updates are atomic and checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.data.corpus import Document, iter_documents
from embedkit.encoding import Encoder, EncoderConfig, EncoderSpec
from embedkit.errors import EmbedkitError, ModelMismatchError
from embedkit.index import Index, IndexManifest, build_dense_index, write_dense_index
from embedkit.index.lifecycle import (
    add_documents,
    add_vectors,
    compact_index,
    merge_indexes,
    remove_documents,
)
from embedkit.training.tiny import build_tiny_bert

WORDS = ("protein cell gene cancer virus dna rna study patients treatment disease blood brain heart risk city river "
         "country film music band album song player team game war king queen president capital population").split()


def random_docs(count: int, seed: int, prefix: str = "d") -> list[Document]:
    rng = np.random.default_rng(seed)
    return [Document(id=f"{prefix}{i}", title=" ".join(rng.choice(WORDS, 2)), text=" ".join(rng.choice(WORDS, 12)))
            for i in range(count)]


def write_corpus(path: Path, docs: list[Document]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("model") / "tiny", seed=3, hidden_size=32, layers=1)


@pytest.fixture(scope="module")
def encoder(tiny_model) -> Encoder:
    # batch_size=1: no padding, so a document's vector does not depend on which batch it was encoded in.
    return Encoder(EncoderConfig(model=str(tiny_model), batch_size=1, device="cpu"))


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 fixed centres (the same for every seed, so queries match the corpus)."""
    centres = np.random.default_rng(1234).standard_normal((20, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 20, count)] + 0.3 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_of(results) -> list[list[str]]:
    return [[hit.id for hit in hits] for hits in results]


def test_flat_upserts_and_deletes_equal_a_rebuild(tmp_path, encoder):
    initial, extra = random_docs(40, seed=1), random_docs(15, seed=2, prefix="n")
    changed = [Document(id=doc.id, title="replaced", text="virus dna cancer " + doc.text) for doc in initial[:5]]
    removed = [doc.id for doc in initial[10:18]] + ["n3"]
    index_path = build_dense_index(initial, encoder, tmp_path / "live", quiet=True)
    report = add_documents(index_path, extra + changed, encoder=encoder)
    assert (report.added, report.replaced) == (15, 5)
    report = remove_documents(index_path, [*removed, "never-indexed"])
    assert report.removed == 9 and report.missing == ["never-indexed"]

    final = {doc.id: doc for doc in initial + extra}
    final.update({doc.id: doc for doc in changed})
    for doc_id in removed:
        del final[doc_id]
    scratch = build_dense_index(list(final.values()), encoder, tmp_path / "scratch", quiet=True)

    live, fresh = Index.load(index_path, encoder=encoder), Index.load(scratch, encoder=encoder)
    queries = ["virus dna cancer", "king queen war", "music band album song", "heart blood risk"]
    for got, want in zip(live.search(queries, k=10), fresh.search(queries, k=10), strict=True):
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=1e-6)
    assert len(live) == len(final) == live.docstore.__len__()
    assert live.docstore.get("d0").title == "replaced"
    assert live.docstore.get("d10") is None
    assert [entry.action for entry in live.manifest.history] == ["build", "add", "remove"]
    assert live.manifest.history[1].model_extra["replaced"] == 5
    live.manifest.check_files(index_path)  # sizes recorded after the update


@pytest.mark.parametrize("factory", ["HNSW16", "IVF16,Flat", "IVF16,SQ4"])
def test_ann_updates_match_a_rebuild(tmp_path, factory):
    dim, spec = 32, EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=32)
    vectors = clustered(2000, dim, seed=0)
    docs = [Document(id=f"v{i}", text=f"doc {i}") for i in range(2000)]
    path = write_dense_index(tmp_path / "live", vectors[:1400], docs[:1400], spec, factory=factory)
    add_vectors(path, docs[1400:], vectors[1400:])
    upserted = clustered(100, dim, seed=9)  # new vectors for 100 existing ids
    add_vectors(path, docs[:100], upserted)
    removed = [f"v{i}" for i in range(500, 700)]
    remove_documents(path, removed)

    final_vectors = np.concatenate([upserted, vectors[100:500], vectors[700:]])
    final_docs = docs[:100] + docs[100:500] + docs[700:]
    scratch = write_dense_index(tmp_path / "scratch", final_vectors, final_docs, spec, factory=factory)
    exact = write_dense_index(tmp_path / "exact", final_vectors, final_docs, spec, factory="Flat")
    queries = clustered(100, dim, seed=5)
    live = Index.load(path)
    if factory.startswith("HNSW"):
        assert len(live.deleted_rows) == 300  # 100 upserted + 200 removed rows masked, not removed
    got = ids_of(live.search_vectors(queries, 10, with_text=False))
    want = ids_of(Index.load(scratch).search_vectors(queries, 10, with_text=False))
    truth = ids_of(Index.load(exact).search_vectors(queries, 10, with_text=False))
    assert not {doc_id for hits in got for doc_id in hits} & set(removed)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
    if "SQ" in factory:  # lossy codes: compare both to exact search instead of to each other
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)])
        scratch_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, truth, strict=True)])
        assert recall >= scratch_recall - 0.05
    else:
        assert overlap >= 0.99

    compact_index(path)
    compacted = Index.load(path)
    assert len(compacted.deleted_rows) == 0 and compacted.faiss_index.ntotal == len(final_docs)
    got = ids_of(compacted.search_vectors(queries, 10, with_text=False))
    if "SQ" not in factory:
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)]) >= 0.99


def test_encoder_settings_are_enforced(tmp_path, encoder, tiny_model):
    path = build_dense_index(random_docs(10, seed=1), encoder, tmp_path / "index", quiet=True)
    other = Encoder(EncoderConfig(model=str(build_tiny_bert(tmp_path / "other", seed=99, hidden_size=32, layers=1)),
                                  device="cpu"))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        add_documents(path, random_docs(3, seed=2, prefix="x"), encoder=other)
    prefixed = Encoder(EncoderConfig(model=str(tiny_model), passage_prefix="passage: ", device="cpu"))
    with pytest.raises(ModelMismatchError, match="passage_prefix"):
        add_documents(path, random_docs(3, seed=2, prefix="x"), encoder=prefixed)
    # without an encoder the manifest's own is loaded (Encoder.from_spec) and used
    assert add_documents(path, random_docs(3, seed=2, prefix="x")).added == 3


def test_a_failed_update_leaves_the_index_intact(tmp_path, encoder):
    path = build_dense_index(random_docs(20, seed=1), encoder, tmp_path / "index", quiet=True)
    before = {name: (path / name).read_bytes() for name in IndexManifest.load(path).files}

    def broken():
        yield from random_docs(3, seed=4, prefix="y")
        raise EmbedkitError("the corpus broke half-way")

    encoder_small_chunks = Encoder(encoder.config.model_copy(update={"chunk_size": 2}), model=encoder.model)
    with pytest.raises(EmbedkitError, match="half-way"):
        add_documents(path, broken(), encoder=encoder_small_chunks)
    assert {name: (path / name).read_bytes() for name in IndexManifest.load(path).files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.lock", "index"]


def test_merge_indexes_and_refuse_duplicates(tmp_path):
    spec = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=8)
    vectors, docs = clustered(60, 8, seed=2), [Document(id=f"m{i}", text=str(i)) for i in range(60)]
    a = write_dense_index(tmp_path / "a", vectors[:30], docs[:30], spec)
    b = write_dense_index(tmp_path / "b", vectors[30:], docs[30:], spec, factory="HNSW8")
    merged = merge_indexes([a, b], tmp_path / "ab", factory="Flat")
    whole = write_dense_index(tmp_path / "whole", vectors, docs, spec)
    assert (merged / "index.faiss").read_bytes() == (whole / "index.faiss").read_bytes()
    with pytest.raises(EmbedkitError, match="unique"):
        merge_indexes([a, a], tmp_path / "aa")
    assert not (tmp_path / "aa").exists()
    other = EncoderSpec(model="synthetic", fingerprint="1", pooling="mean", normalize=True, dim=8)
    c = write_dense_index(tmp_path / "c", vectors[:5], [Document(id=f"c{i}", text="") for i in range(5)], other)
    with pytest.raises(ModelMismatchError):
        merge_indexes([a, c], tmp_path / "ac")


def test_cli_add_remove_compact(tmp_path, tiny_model, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", random_docs(20, seed=1))
    out = tmp_path / "hnsw"
    assert main(["index", "build", "--corpus", str(corpus), "--model", str(tiny_model), "--out", str(out),
                 "--index-factory", "HNSW8", "--device", "cpu", "-q"]) == 0
    new = write_corpus(tmp_path / "new.jsonl", random_docs(5, seed=7, prefix="z"))
    assert main(["index", "add", str(out), "--corpus", str(new), "--device", "cpu", "-q"]) == 0
    (tmp_path / "ids.txt").write_text("z1\nd2\n")
    assert main(["index", "remove", str(out), "--ids", str(tmp_path / "ids.txt"), "--id", "d3"]) == 0
    assert "masked" in capsys.readouterr().out
    assert IndexManifest.load(out).num_docs == 22
    assert main(["index", "compact", str(out)]) == 0
    assert not (out / "deleted.npy").exists()
    assert [doc.id for doc in iter_documents(new)][0] in Index.load(out).docstore.row_of(["z0"])
    assert main(["index", "remove", str(tmp_path / "missing")]) == 2
    assert main(["index", "add", str(out), "--corpus", str(tmp_path / "nothing.jsonl"), "-q"]) == 2


def test_on_disk_ivf_and_memory_mapped_loading(tmp_path):
    spec = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=16)
    vectors, docs = clustered(1200, 16, seed=3), [Document(id=f"o{i}", text="") for i in range(1200)]
    in_memory = write_dense_index(tmp_path / "memory", vectors, docs, spec, factory="IVF8,Flat")
    on_disk = write_dense_index(tmp_path / "disk", vectors, docs, spec, factory="IVF8,Flat", on_disk=True)
    assert (on_disk / "index.ivfdata").stat().st_size > 1200 * 16 * 4  # the lists live in their own file
    moved = on_disk.rename(tmp_path / "moved")  # found beside index.faiss wherever the folder goes
    queries = clustered(30, 16, seed=8)
    want = ids_of(Index.load(in_memory).search_vectors(queries, 10, with_text=False))
    assert ids_of(Index.load(moved).search_vectors(queries, 10, with_text=False)) == want
    assert ids_of(Index.load(in_memory, mmap=True).search_vectors(queries, 10, with_text=False)) == want
    with pytest.raises(EmbedkitError, match="on disk"):
        remove_documents(moved, ["o1"])
    merged = merge_indexes([moved], tmp_path / "rebuilt", on_disk=True)
    assert ids_of(Index.load(merged).search_vectors(queries, 10, with_text=False)) == want


def test_cli_tune_reports_recall_against_exact_search(tmp_path, capsys):
    spec = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=16)
    path = write_dense_index(tmp_path / "index", clustered(600, 16, seed=4),
                             [Document(id=f"t{i}", text="") for i in range(600)], spec)
    table = tmp_path / "tune.md"
    assert main(["index", "tune", str(path), "--kinds", "Flat,HNSW32,IVF-Flat", "--num-queries", "40",
                 "--output", str(table)]) == 0
    rows = [line.split("|") for line in table.read_text().splitlines()[2:]]
    recall = {(row[1].strip(), row[3].strip()): float(row[4]) for row in rows}
    assert recall[("Flat", "-")] == 1.0
    assert recall[("HNSW32", "efSearch=256")] >= 0.95
    assert max(value for (name, _), value in recall.items() if name == "IVF-Flat") == 1.0  # nprobe = nlist is exact
    assert "IVF8,Flat" in capsys.readouterr().out
