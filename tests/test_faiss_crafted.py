"""A FAISS file whose size fields ask for far more than the file holds (damaged, or crafted by whoever shared
the index) is refused with IndexFormatError before FAISS allocates that memory: FAISS itself resizes first and
reads after, so without the check each case below costs about 1 GiB before its read error. Real FAISS files;
peak memory is measured with resource.getrusage in a fresh process."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedkit.errors import IndexFormatError
from embedkit.index.faiss_ops import read_faiss_file
from tests.helpers import write_jsonl

D, N = 8, 300
# FAISS < 1.14.2 has no settable deserialization limits: embedkit cannot check sizes there (see check_faiss_sizes).
needs_limits = pytest.mark.skipif(not hasattr(faiss, "set_deserialization_loop_limit"),
                                  reason="FAISS without settable deserialization limits")
# Each crafted size asks for about 1 GiB; a checked read may grow by FAISS's floor for derived tables at most.
GIB = 1 << 30
MAX_GROWTH_MB = 100
FACTORIES = ["Flat", "IDMap2,Flat", "HNSW8", "IVF4,Flat", "IVF4,PQ4x4", "IVF4,PQ4x4fs", "OPQ4,IVF4,PQ4x4",
             "SQ8", "PCA4,Flat"]


def build(factory: str):
    x = np.random.default_rng(0).standard_normal((N, D)).astype("float32")
    index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(x)
    if factory.startswith("IDMap"):
        index.add_with_ids(x, np.arange(N, dtype="int64"))
    else:
        index.add(x)
    return index, x


def serialized(factory: str) -> bytes:
    return faiss.serialize_index(build(factory)[0]).tobytes()


def field(data: bytes, pattern: bytes) -> int:
    offset = data.find(pattern)
    assert offset >= 0 and data.find(pattern, offset + 1) < 0, "the size field must be found exactly once"
    return offset


def crafted(factory: str) -> tuple[bytes, int]:
    """The factory's file with one recorded size replaced, and its offset: the flat codes (float count), an
    IDMap's id list, HNSW's per-vector offsets, the first IVF inverted list; or (`nlist`) the IVF's list count,
    which costs FAISS ~160 bytes per list before any list size is read, or (`pq_d`) a PQ's dimension."""
    factory, _, which = factory.partition(" ")
    data = serialized(factory)
    if which == "nlist":
        offset, value = field(data, b"ilar") + 4, GIB // 160
    elif which == "pq_d":  # the PQ's dimension: FAISS sizes its centroids (d·16 floats) from it before reading
        offset, value = field(data, struct.pack("<QQQ", D, 4, 4)), GIB // (16 * 4)
    elif factory == "Flat":
        offset, value = field(data, struct.pack("<Q", N * D)), GIB // 4
    elif factory == "IDMap2,Flat":
        offset, value = field(data, struct.pack("<Qqq", N, 0, 1)), GIB // 8
    elif factory == "HNSW8":
        offset, value = field(data, struct.pack("<QQ", N + 1, 0)), GIB // 8
    else:  # IVF: "ilar", nlist, code_size, "full", then the count and the list sizes
        ilar = field(data, b"ilar")
        nlist, code_size = struct.unpack_from("<QQ", data, ilar + 4)
        assert data[ilar + 20: ilar + 24] == b"full" and struct.unpack_from("<Q", data, ilar + 24)[0] == nlist
        offset, value = ilar + 32, GIB // (8 + code_size)
    out = bytearray(data)
    struct.pack_into("<Q", out, offset, value)
    return bytes(out), offset


def crafted_on_disk(tmp_path: Path) -> Path:
    """An on-disk IVF folder as embedkit writes it, its coarse quantizer's vector count made ~1 GiB."""
    from embedkit.data.corpus import Document
    from embedkit.encoding.config import EncoderSpec
    from embedkit.index.dense import write_dense_index

    spec = EncoderSpec(model="synthetic", fingerprint="0", pooling="mean", normalize=True, dim=D)
    x = np.random.default_rng(0).standard_normal((N, D)).astype("float32")
    folder = write_dense_index(tmp_path / "on-disk", x, [Document(id=f"d{i}", text="") for i in range(N)], spec,
                               factory="IVF4,Flat", on_disk=True)
    path = folder / "index.faiss"
    data = bytearray(path.read_bytes())
    at = field(bytes(data), b"IxF") + 37  # the quantizer's IndexFlat: fourcc and header, then its float count
    assert struct.unpack_from("<Q", data, at)[0] == 4 * D
    struct.pack_into("<Q", data, at, GIB // 4)
    path.write_bytes(bytes(data))
    return path


CRAFTED = ["Flat", "IDMap2,Flat", "HNSW8", "IVF4,Flat", "IVF4,PQ4x4", "IVF4,Flat nlist", "IVF4,PQ4x4 pq_d"]
# Reads every file given in one fresh process; prints each outcome with the peak RSS growth so far (kB).
READER = """
import json, resource, sys
from embedkit.errors import IndexFormatError
from embedkit.index.faiss_ops import read_faiss_file
read_faiss_file(sys.argv[1])  # a valid file first: imports and FAISS's own buffers are not growth
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for arg in sys.argv[2:]:
    path, _, kind = arg.partition("#")  # "#ondisk": IVF lists in index.ivfdata beside the file
    for mmap in (False, True):
        try:
            read_faiss_file(path, mmap=mmap, on_disk=kind == "ondisk")
            outcome = "read"
        except IndexFormatError as error:
            outcome = str(error)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
        print(json.dumps({"path": path, "mmap": mmap, "outcome": outcome, "grown_kb": grown}))
"""


@needs_limits
def test_crafted_sizes_are_refused_before_faiss_allocates(tmp_path):
    valid = tmp_path / "valid.faiss"
    valid.write_bytes(serialized("Flat"))
    paths = []
    for factory in CRAFTED:
        data, _ = crafted(factory)
        path = tmp_path / f"{factory.replace(',', '_').replace(' ', '_')}.faiss"
        path.write_bytes(data)
        paths.append(str(path))
    paths.append(f"{crafted_on_disk(tmp_path)}#ondisk")
    done = subprocess.run([sys.executable, "-c", READER, str(valid), *paths], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 2 * (len(CRAFTED) + 1)
    for result in results:
        assert result["outcome"].startswith(f"{result['path']} is damaged"), result
        assert result["grown_kb"] < MAX_GROWTH_MB * 1024, result


@pytest.mark.parametrize("factory", FACTORIES)
def test_real_files_read_as_before_and_faiss_keeps_its_limit(tmp_path, factory):
    index, x = build(factory)
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    limit = faiss.get_deserialization_vector_byte_limit()
    want = index.search(x[:5], 5)
    for mmap in (False, True):
        got = read_faiss_file(path, mmap=mmap).search(x[:5], 5)
        assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])
    assert faiss.get_deserialization_vector_byte_limit() == limit


@needs_limits
def test_a_file_cut_short_is_refused(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(serialized("HNSW8")[:-100])
    with pytest.raises(IndexFormatError, match="is damaged"):
        read_faiss_file(path)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    from embedkit.cli import main
    from embedkit.training.tiny import build_tiny_bert

    root = tmp_path_factory.mktemp("crafted-cli")
    model = build_tiny_bert(root / "model", seed=0)
    corpus = write_jsonl(root / "corpus.jsonl", [{"_id": f"d{i}", "text": t} for i, t in enumerate(
        ["the protein of the cell", "a river in the city", "the film and its music", "data search index"])])
    out = root / "index"
    assert main(["index", "build", "--corpus", str(corpus), "--model", str(model), "--out", str(out), "-q"]) == 0
    return out


# `embedkit search` as the console script runs it, with the process's peak RSS written to stderr at exit.
SEARCH = """
import resource, sys
from embedkit.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print(f"maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def search(index: Path, *extra: str) -> tuple[int, str, int]:
    done = subprocess.run([sys.executable, "-c", SEARCH, "search", str(index), "cell protein", "-q", *extra],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    peak = int(done.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    return done.returncode, done.stderr, peak


@needs_limits
def test_embedkit_search_on_a_crafted_index_exits_2_with_small_memory(tiny_index, tmp_path):
    import shutil

    code, _, healthy_peak = search(tiny_index)
    assert code == 0
    folder = Path(shutil.copytree(tiny_index, tmp_path / "crafted"))
    faiss_file = folder / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    dim = faiss.read_index(str(faiss_file)).d
    offset = field(bytes(data), struct.pack("<Q", 4 * dim))  # the Flat codes' float count (4 documents)
    struct.pack_into("<Q", data, offset, 2 * GIB // 4)
    faiss_file.write_bytes(bytes(data))  # same length: the manifest's cheap size check passes
    for extra in ((), ("--mmap",)):
        code, stderr, peak = search(folder, *extra)
        assert code == 2, stderr
        assert f"{faiss_file} is damaged" in stderr and "Traceback" not in stderr
        assert peak < healthy_peak + MAX_GROWTH_MB * 1024, (peak, healthy_peak)


def test_a_table_faiss_derives_beyond_the_file_does_not_block_a_real_index(tmp_path):
    """IVF-PQ fast-scan rebuilds a precomputed table of nlist·M·16 floats on load (here 128 MiB from an 8 MiB
    file): the check cannot bound it by the file, so it stops there and the real read goes on."""
    from embedkit.index.faiss_ops import SIZE_CHECK_FLOOR_BYTES

    d, nlist, m = 64, 32768, 64
    assert nlist * m * 16 * 4 > SIZE_CHECK_FLOOR_BYTES
    rng = np.random.default_rng(0)
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(rng.standard_normal((nlist, d)).astype("float32"))
    index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, m, 4)
    faiss.copy_array_to_vector(rng.standard_normal(d * 16).astype("float32"), index.pq.centroids)
    index.is_trained = True  # set codebooks instead of training: the layout, not the quality, is tested
    x = rng.standard_normal((20, d)).astype("float32")
    index.add(x)
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    assert path.stat().st_size < SIZE_CHECK_FLOOR_BYTES
    assert np.array_equal(read_faiss_file(path).search(x[:3], 3)[1], index.search(x[:3], 3)[1])
