"""Issue 22: an index folder is input from strangers. Crafted manifests, links, document stores and masks are
refused with exit status 2 and a message, never followed outside the folder, never a traceback or a wrong OK.

Every test runs `python -m embedkit …` in a subprocess on a tiny random BERT (helpers of test_index_integrity).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_jsonl
from tests.test_index_integrity import ROOT, assert_user_error, base_index, docs, embedkit, tiny_model  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stored_base(tiny_model, tmp_path_factory) -> Path:  # noqa: F811
    """A Flat index over 30 documents that keeps a float32 copy of its vectors (`vectors.f32`)."""
    folder = tmp_path_factory.mktemp("stored")
    corpus = write_jsonl(folder / "corpus.jsonl", docs(30))
    result = embedkit("index", "build", "--corpus", corpus, "--model", tiny_model, "--device", "cpu",
                      "--store-vectors", "float32", "--out", folder / "index", "--quiet")
    assert result.returncode == 0, result.stderr
    return folder / "index"


@pytest.fixture
def stored(stored_base, tmp_path) -> Path:
    copy = tmp_path / "indexes" / "idx"
    shutil.copytree(stored_base, copy)
    return copy


@pytest.fixture
def plain(base_index, tmp_path) -> Path:  # noqa: F811
    """A copy of the Flat index without stored vectors."""
    copy = tmp_path / "indexes" / "plain"
    shutil.copytree(base_index, copy)
    return copy


@pytest.fixture
def new_docs(tmp_path) -> Path:
    return write_jsonl(tmp_path / "new.jsonl", docs(3, prefix="n"))


def edit_manifest(index: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    change(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rerecord(index: Path, name: str) -> None:
    """Record `name`'s real size and checksum, as a crafted (self-consistent) manifest would."""
    data = (index / name).read_bytes()
    edit_manifest(index, lambda m: m["files"].update({name: {"size": len(data),
                                                             "sha256": hashlib.sha256(data).hexdigest()}}))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


# --- item 2: every path in a manifest stays inside its folder ------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_vectors_file_outside_the_folder_is_never_read_or_written(stored, new_docs, how):
    outside = stored.parent / "outside.f32"
    shutil.copyfile(stored / "vectors.f32", outside)
    original = outside.read_bytes()
    edit_manifest(stored, lambda m: m["vectors"].update(file=str(outside) if how == "absolute" else "../outside.f32"))
    before = snapshot(stored)
    for args in (["index", "add", stored, "--corpus", new_docs, "--device", "cpu"], ["index", "verify", stored],
                 ["index", "compact", stored], ["search", stored, "gene", "--backend", "torch", "--device", "cpu"],
                 ["index", "info", stored]):
        assert_user_error(embedkit(*args), "manifest.json", "vectors.file")
    assert outside.read_bytes() == original  # byte for byte: nothing appended
    assert snapshot(stored) == before


def test_a_files_entry_outside_the_folder_is_refused_not_ok(stored, new_docs):
    passwd = Path("/etc/passwd")
    name = "../" * len(stored.resolve().parts) + "etc/passwd"  # enough '..' to reach / from the folder
    assert (stored / name).resolve() == passwd.resolve()
    edit_manifest(stored, lambda m: m["files"].update({name: {"size": passwd.stat().st_size, "sha256": None}}))
    result = embedkit("index", "verify", stored)
    assert_user_error(result, "manifest.json", "'dense.files'", name, "'..'")
    assert "OK" not in result.stdout
    result = embedkit("index", "add", stored, "--corpus", new_docs, "--device", "cpu")
    assert_user_error(result, "manifest.json", name)
    assert "SameFileError" not in result.stderr


def test_a_missing_checksum_is_a_finding_in_a_format_2_manifest(stored, new_docs):
    edit_manifest(stored, lambda m: m["files"]["docstore.sqlite"].update(sha256=None))
    result = embedkit("index", "verify", stored)
    assert_user_error(result, "manifest.json", "docstore.sqlite", "sha256: null")
    assert "OK" not in result.stdout
    assert_user_error(embedkit("index", "add", stored, "--corpus", new_docs, "--device", "cpu"), "sha256: null")


def test_a_format_1_manifest_is_still_read_with_sizes_only(stored):
    from tests.test_index_model import to_format_1

    current = json.loads((stored / "manifest.json").read_text())
    old = to_format_1(current)
    old["settings"]["vectors"] = current["vectors"]
    (stored / "manifest.json").write_text(json.dumps(old))
    result = embedkit("index", "verify", stored)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "no recorded checksum" in result.stdout


def _link_docstore(index: Path, outside: Path) -> Path:
    shutil.copyfile(index / "docstore.sqlite", outside / "docstore.sqlite")
    (index / "docstore.sqlite").unlink()
    (index / "docstore.sqlite").symlink_to(outside / "docstore.sqlite")
    return outside / "docstore.sqlite"


def _link_faiss(index: Path, outside: Path) -> Path:
    shutil.copyfile(index / "index.faiss", outside / "index.faiss")
    (index / "index.faiss").unlink()
    (index / "index.faiss").symlink_to(outside / "index.faiss")
    return outside / "index.faiss"


def _link_folder(index: Path, outside: Path) -> Path:
    (outside / "secret.txt").write_text("not the index's")
    (index / "extra").symlink_to(outside, target_is_directory=True)
    return outside / "secret.txt"


def _link_manifest(index: Path, outside: Path) -> Path:
    shutil.copyfile(index / "manifest.json", outside / "manifest.json")
    (index / "manifest.json").unlink()
    (index / "manifest.json").symlink_to(outside / "manifest.json")
    return outside / "manifest.json"


@pytest.mark.parametrize("link", [_link_docstore, _link_faiss, _link_folder, _link_manifest],
                         ids=["docstore", "faiss-not-imported", "sub-folder", "manifest"])
def test_a_symlink_leaving_the_folder_is_refused(stored, new_docs, tmp_path, link):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = link(stored, outside)
    original = target.read_bytes()
    for args in (["index", "verify", stored], ["search", stored, "gene", "--device", "cpu"],
                 ["index", "add", stored, "--corpus", new_docs, "--device", "cpu"], ["index", "info", stored]):
        assert_user_error(embedkit(*args), "symlink", "outside the folder")
    assert target.read_bytes() == original


@pytest.fixture
def imported(tmp_path, tiny_model) -> tuple[Path, Path]:  # noqa: F811
    """`embedkit index import --link` of a plain FAISS file (32-dim, like the tiny model) and its corpus."""
    import faiss

    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    vectors = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    faiss.write_index(flat, str(prebuilt / "Flat.index"))
    corpus = write_jsonl(prebuilt / "wiki.jsonl", [{"id": str(i), "contents": f'"T{i}"\ngene text {i}'}
                                                   for i in range(12)])
    out = tmp_path / "wiki"
    result = embedkit("index", "import", "--faiss", prebuilt / "Flat.index", "--corpus", corpus, "--model",
                      tiny_model, "--device", "cpu", "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    assert (out / "index.faiss").is_symlink()
    return out, prebuilt / "Flat.index"


def test_the_link_index_import_made_is_still_followed(imported, new_docs):
    out, original = imported
    before = original.read_bytes()
    result = embedkit("index", "verify", out)
    assert result.returncode == 0, result.stderr
    assert "index import --link" in result.stdout and "no recorded checksum" not in result.stdout
    result = embedkit("search", out, "gene text", "--k", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    result = embedkit("index", "add", out, "--corpus", new_docs, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # The update wrote a new segment beside it: the link stays segment 0 (no copy of a big index) ...
    assert (out / "index.faiss").is_symlink()
    assert original.read_bytes() == before  # ... and nothing was written through it
    hits = embedkit("search", out, "gene text", "--k", "20", "--device", "cpu")
    assert hits.returncode == 0 and len(hits.stdout.splitlines()) >= 12, hits.stderr
    assert embedkit("index", "verify", out).returncode == 0


def test_an_imported_link_pointed_elsewhere_is_refused(imported, tmp_path):
    out, original = imported
    other = tmp_path / "other.index"
    shutil.copyfile(original, other)  # same bytes and size: only the target differs from the recorded one
    (out / "index.faiss").unlink()
    (out / "index.faiss").symlink_to(other)
    assert_user_error(embedkit("index", "verify", out), "symlink", str(other))
    assert_user_error(embedkit("search", out, "gene", "--device", "cpu"), "symlink")


# --- item 8 (index parts): damage is exit 2 with a message, never an SQLite/NumPy/JSON traceback ------------


def _rename_column(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE docs RENAME COLUMN text TO body")


def _resurrecting_trigger(db: sqlite3.Connection) -> None:
    # A writer deleting a row would silently keep it: `index remove` must not run a stranger's trigger.
    db.execute("CREATE TABLE keep (row INTEGER, id TEXT, title TEXT, text TEXT)")
    db.execute("CREATE TRIGGER undelete AFTER DELETE ON docs BEGIN INSERT INTO keep VALUES "
               "(old.row, old.id, old.title, old.text); END")


def _view(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE docs RENAME TO real_docs")
    db.execute("CREATE VIEW docs AS SELECT row, id, title, text FROM real_docs")


def _no_unique_id(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE plain (row INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT NOT NULL, "
               "text TEXT NOT NULL)")
    db.execute("INSERT INTO plain SELECT * FROM docs")
    db.execute("DROP TABLE docs")
    db.execute("ALTER TABLE plain RENAME TO docs")


@pytest.mark.parametrize("change", [_rename_column, _resurrecting_trigger, _view, _no_unique_id],
                         ids=["renamed-column", "trigger", "view", "no-unique-id"])
def test_a_docstore_with_another_schema_is_damage(plain, change):
    db = sqlite3.connect(plain / "docstore.sqlite")
    change(db)
    db.commit()
    db.close()
    rerecord(plain, "docstore.sqlite")
    for args in (["index", "verify", plain], ["search", plain, "gene", "--device", "cpu"],
                 ["index", "remove", plain, "--id", "d1"]):
        result = embedkit(*args)
        assert_user_error(result, "docstore.sqlite", "not a store embedkit wrote")
        assert "OperationalError" not in result.stderr


def test_a_docstore_value_that_is_not_text_is_damage(plain):
    db = sqlite3.connect(plain / "docstore.sqlite")
    db.execute("UPDATE docs SET id = x'00ff' WHERE row = 3")
    db.commit()
    db.close()
    rerecord(plain, "docstore.sqlite")
    assert_user_error(embedkit("index", "verify", plain), "row 3", "blob")
    assert_user_error(embedkit("search", plain, "gene", "--k", "30", "--device", "cpu"), "row 3", "not text")


def _save(array: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, allow_pickle=allow_pickle)


@pytest.mark.parametrize("write, needle", [
    (lambda path: path.write_bytes(b"garbage " * 16), "not a .npy file"),
    (_save(np.array([{"row": 1}], dtype=object), allow_pickle=True), "pickled"),
    (_save(np.zeros((2, 2), dtype=np.float32)), "not a list of row numbers"),
    (_save(np.array([5, 99], dtype=np.int64)), "outside the index's rows"),
    (_save(np.array([-1], dtype=np.int64)), "outside the index's rows"),
], ids=["garbage", "pickled-object-array", "float-matrix", "row-past-next_row", "negative-row"])
def test_a_bad_deleted_npy_is_damage(plain, write, needle):
    write(plain / "deleted.npy")
    rerecord(plain, "deleted.npy")
    for args in (["index", "verify", plain], ["search", plain, "gene", "--device", "cpu"]):
        result = embedkit(*args)
        assert_user_error(result, "deleted.npy")
        assert needle in result.stderr or needle == "pickled" and "allow_pickle" in result.stderr, result.stderr


def test_a_deleted_npy_masking_a_live_document_is_damage(plain):
    np.save(plain / "deleted.npy", np.array([4], dtype=np.int64))
    rerecord(plain, "deleted.npy")
    edit_manifest(plain, lambda m: m.update(num_docs=29))  # counts made to agree: only the overlap is wrong
    db = sqlite3.connect(plain / "docstore.sqlite")
    db.execute("DELETE FROM docs WHERE row = 7")
    db.commit()
    db.close()
    rerecord(plain, "docstore.sqlite")
    assert_user_error(embedkit("index", "verify", plain), "deleted.npy", "masks row 4")


@pytest.mark.parametrize("text, needle", [
    ('{"num_docs": ' + "9" * 5000 + "}", "4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"kind": "dense", "kind": "bm25"}', "appears twice"),
    ('{"num_docs": NaN}', "NaN"),
    ("[1, 2]", "expected a JSON object"),
    ("", "malformed JSON"),
], ids=["5000-digits", "deep-nesting", "repeated-key", "nan", "array", "empty"])
def test_a_manifest_parsers_choke_on_is_damage(plain, text, needle):
    (plain / "manifest.json").write_text(text)
    for args in (["index", "verify", plain], ["index", "info", plain]):
        assert_user_error(embedkit(*args), "manifest.json", needle)


def test_a_manifest_that_is_not_utf8_is_damage(plain):
    (plain / "manifest.json").write_bytes(b'{"kind": "dense\xff"}')
    assert_user_error(embedkit("index", "verify", plain), "manifest.json", "not UTF-8")


def test_verify_into_a_closed_pipe_exits_quietly(plain):
    """`embedkit index verify … | head -1`: the reader is gone before embedkit writes; no BrokenPipeError."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    for args in (["index", "verify", str(plain)], ["index", "info", str(plain)]):
        proc = subprocess.Popen([sys.executable, "-m", "embedkit", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=ROOT)
        proc.stdout.close()  # like `head -1` having exited
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait(timeout=120) == 141, stderr  # 128 + SIGPIPE, as a shell reports for Unix tools
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


# --- item 10 (index part): the FAISS index agrees with the manifest ------------------------------------------


def test_an_encoder_dim_that_disagrees_with_faiss_is_damage(plain):
    edit_manifest(plain, lambda m: m["encoder"].update(dim=16))
    result = embedkit("index", "verify", plain)
    assert_user_error(result, "encoder.dim", "32-dimensional")
    assert "OK" not in result.stdout
    assert_user_error(embedkit("search", plain, "gene", "--device", "cpu"), "encoder.dim")


# --- more crafted folders (beyond the list) ---------------------------------------------------------


def test_a_metric_that_disagrees_with_faiss_is_damage(plain):
    edit_manifest(plain, lambda m: m.update(metric="l2"))  # the FAISS file measures inner products
    assert_user_error(embedkit("index", "verify", plain), "metric")
    assert_user_error(embedkit("search", plain, "gene", "--device", "cpu"), "metric")


def test_next_row_below_the_stored_rows_is_damage(plain, new_docs):
    # An add would give new documents the FAISS ids of existing ones: two documents, one vector id.
    edit_manifest(plain, lambda m: m.update(next_row=5))
    assert_user_error(embedkit("index", "verify", plain), "next_row 5")
    assert_user_error(embedkit("index", "add", plain, "--corpus", new_docs, "--device", "cpu"), "next_row 5")


def test_vectors_file_naming_another_file_of_the_folder_is_refused(stored, new_docs):
    # Inside the folder, recorded, but an update would write vector rows into the document store.
    edit_manifest(stored, lambda m: m["vectors"].update(file="docstore.sqlite"))
    assert_user_error(embedkit("index", "add", stored, "--corpus", new_docs, "--device", "cpu"),
                      "dense.vectors", "file 'docstore.sqlite'", "vectors.f32")


def test_a_stored_vectors_file_of_the_wrong_size_is_damage_for_torch_search(stored):
    with open(stored / "vectors.f32", "ab") as handle:
        handle.write(b"\0" * 7)
    rerecord(stored, "vectors.f32")
    result = embedkit("search", stored, "gene", "--backend", "torch", "--device", "cpu")
    assert_user_error(result, "vectors.f32", "bytes")


@pytest.mark.parametrize("change, needle", [
    (lambda m: m["files"].update({"./index.faiss": m["files"]["index.faiss"]}), "'.' component"),
    (lambda m: m["files"].update({"Index.FAISS": m["files"]["index.faiss"]}), "Index.FAISS is missing"),
    (lambda m: m["files"].update({"a\\..\\..\\x": m["files"]["index.faiss"]}), "backslash"),
    (lambda m: m["files"].update({"C:/x": m["files"]["index.faiss"]}), "absolute"),
    (lambda m: m["files"]["index.faiss"].update(sha256="abc"), "sha256"),
    (lambda m: m["files"].pop("docstore.sqlite"), "does not record docstore.sqlite"),
    (lambda m: m.update(on_disk=True), "does not record index.ivfdata"),
    (lambda m: m.update(num_docs=-1), "num_docs"),
    (lambda m: m.update(num_docs=10**18), "manifest says 1000000000000000000"),
    (lambda m: m.update(format_version="2"), "format_version"),
    (lambda m: m.update(format_version=0), "format_version"),
    (lambda m: m.update(kind="graph"), "kind"),
    (lambda m: m["files"]["index.faiss"].update(size=-5), "size"),
    (lambda m: m["encoder"].update(max_length=-5), "max_length -5"),
    (lambda m: m.update(next_row=2**63), "next_row"),
], ids=["dot-component", "other-case", "backslashes", "drive", "short-sha256", "unrecorded-docstore",
        "on-disk-without-lists", "negative-count", "huge-count", "string-format", "format-0", "unknown-kind",
        "negative-size", "negative-max-length", "next-row-past-int64"])
def test_crafted_manifest_values_are_damage(plain, change, needle):
    edit_manifest(plain, change)
    result = embedkit("index", "verify", plain)
    assert_user_error(result, needle)
    assert "OK" not in result.stdout


@pytest.mark.parametrize("make", [lambda path: os.mkfifo(path), lambda path: path.mkdir()], ids=["fifo", "folder"])
def test_an_index_faiss_that_is_not_a_file_is_damage(plain, make):
    (plain / "index.faiss").unlink()
    make(plain / "index.faiss")
    for args in (["index", "verify", plain], ["search", plain, "gene", "--device", "cpu"]):
        assert_user_error(embedkit(*args, timeout=120), "index.faiss")  # a FIFO would block a reader forever


def test_a_folder_named_with_url_characters_works(plain):
    odd = plain.parent / "idx #1?mode=rw&ü"
    plain.rename(odd)
    result = embedkit("index", "verify", odd)
    assert result.returncode == 0, result.stderr
    result = embedkit("search", odd, "gene", "--k", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def bm25_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bm25")
    corpus = write_jsonl(folder / "corpus.jsonl", docs(30))
    result = embedkit("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus,
                      "--out", folder / "index")
    assert result.returncode == 0, result.stderr
    return folder / "index"


def _nested_vocab(index: Path) -> None:
    (index / "bm25s" / "vocab.index.json").write_text("[" * 100_000 + "]" * 100_000)
    rerecord(index, "bm25s/vocab.index.json")


def _pickled_scores(index: Path) -> None:
    np.save(index / "bm25s" / "data.csc.index.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    rerecord(index, "bm25s/data.csc.index.npy")


def _linked_params(index: Path) -> None:
    outside = index.parent / "params.json"
    shutil.move(index / "bm25s" / "params.index.json", outside)
    (index / "bm25s" / "params.index.json").symlink_to(outside)


@pytest.mark.parametrize("change, needle", [(_nested_vocab, "cannot be read"), (_pickled_scores, "cannot be read"),
                                            (_linked_params, "outside the folder")],
                         ids=["nested-vocab-json", "pickled-scores", "symlinked-params"])
def test_a_bm25_folder_with_crafted_backend_files_is_damage(bm25_base, tmp_path, change, needle):
    index = tmp_path / "bm25"
    shutil.copytree(bm25_base, index, symlinks=True)
    change(index)
    assert_user_error(embedkit("search", index, "gene"), needle)


def test_document_rows_that_are_not_the_faiss_ids_are_damage(plain):
    # Counts agree, but no FAISS id names a document: every search would silently return nothing.
    db = sqlite3.connect(plain / "docstore.sqlite")
    db.execute("UPDATE docs SET row = row + 100")
    db.commit()
    db.close()
    rerecord(plain, "docstore.sqlite")
    edit_manifest(plain, lambda m: m.update(next_row=130))
    result = embedkit("index", "verify", plain)
    assert_user_error(result, "FAISS ids", "FAISS row 0 has no document")


def test_a_nested_value_in_the_history_is_damage(plain):
    # Within the JSON reader's depth, but printing (`index info`) and saving (every update) would recurse.
    text = (plain / "manifest.json").read_text()
    manifest = json.loads(text)
    manifest["history"][0]["note"] = "X"
    (plain / "manifest.json").write_text(json.dumps(manifest).replace('"X"', "[" * 900 + "]" * 900))
    for args in (["index", "info", plain], ["index", "remove", plain, "--id", "d1"]):
        assert_user_error(embedkit(*args), "history", "plain values")


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # so the crafted size cannot take the machine's RAM


def test_a_faiss_file_asking_for_huge_memory_is_damage(plain):
    import struct

    data = bytearray((plain / "index.faiss").read_bytes())
    at = data.index(b"IxFI") + 37  # IndexFlat: fourcc, d, ntotal, 2 dummies, is_trained, metric; then codes size
    assert struct.unpack("<Q", data[at : at + 8])[0] == 30 * 32, "the FAISS Flat layout changed"
    data[at : at + 8] = struct.pack("<Q", 2**34)  # 64 GiB of floats, below FAISS's own 1 TiB cap
    (plain / "index.faiss").write_bytes(bytes(data))
    rerecord(plain, "index.faiss")
    assert_user_error(embedkit("index", "verify", plain, preexec=_limit_memory), "index.faiss", "memory")
