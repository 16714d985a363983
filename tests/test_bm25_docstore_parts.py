"""Issue 24, gap a: a BM25 update writes its documents into a new document-store part and its deletions into new
deletion files; it never copies, rewrites or hashes the parts it only links (cost follows the change).

What is checked: the old parts keep their inode and mtime through adds, upserts and removals (they are hard links
of the old folder's files), the update hashes only the files it writes, the folder's new bytes are those of the
change; ids are found in every part, deleted rows skipped; `compact` writes one `docstore.sqlite` again (bm25s
renumbers rows, pyserini keeps them); a folder in the layout before parts (a store updated in place) opens,
verifies and updates; `index info` shows the parts; a manifest naming a part outside the folder is refused.
Search results equal a rebuild throughout (`assert_same_as_rebuild`, shared with the property tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from embedkit.errors import IndexFormatError
from embedkit.index.docstore import DOCSTORE_NAME, DocStore
from embedkit.index.kinds import verify_index
from embedkit.index.manifest import BM25Manifest
from embedkit.lexical import BM25Settings, build_bm25_index
from embedkit.lexical import update as bm25_update
from embedkit.lexical.index import open_docstore
from embedkit.lexical.settings import BM25MergePolicy
from embedkit.lexical.update import add_documents, compact_index, remove_documents
from tests.test_bm25_updates import WORDS, assert_same_as_rebuild, doc, live_documents, needs_java

NEVER = BM25MergePolicy(max_segments=None, max_deleted_fraction=None)


def stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def corpus(count: int) -> list:
    """`count` documents of a few words each (deterministic)."""
    return [doc(f"d{i}", [WORDS[(i * 7 + j) % 6] for j in range(i % 5 + 1)] + [f"w{i}x"]) for i in range(count)]


@pytest.fixture()
def hashed(monkeypatch) -> list[str]:
    """The files the update hashes (names under the folder being written)."""
    names: list[str] = []
    real = bm25_update.file_sha256

    def spy(path: Path) -> str:
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(bm25_update, "file_sha256", spy)
    return names


def test_update_links_old_parts_and_writes_only_the_change(tmp_path, hashed):
    path = build_bm25_index(corpus(3000), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    part0 = stamp(path / DOCSTORE_NAME)
    assert part0[2] > 150_000  # the corpus' text: what an update used to copy and hash

    report = add_documents(path, [doc("n1", ["omega", "alpha"]), doc("d5", ["sigma"])])  # one new, one replaced
    assert (report.added, report.replaced, report.num_docs) == (1, 1, 3001)
    manifest = BM25Manifest.load(path)
    assert [(p.id, p.docstore, p.deleted, p.row_start, p.row_stop, p.num_stored, p.num_deleted)
            for p in manifest.docstore_parts] == [
        (0, DOCSTORE_NAME, "seg-000000.del-000001.npy", 0, 3000, 3000, 1),
        (1, "seg-000001.docstore.sqlite", None, 3000, 3002, 2, 0)]
    assert stamp(path / DOCSTORE_NAME) == part0  # not copied, not rewritten
    # an embedkit that knows no parts would read docstore.sqlite alone: it must refuse the folder as newer
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 3
    assert DOCSTORE_NAME not in hashed and "seg-000001.docstore.sqlite" in hashed
    part1 = stamp(path / "seg-000001.docstore.sqlite")

    hashed.clear()
    report = remove_documents(path, ["d7", "n1", "nope"])  # one from each part
    assert (report.removed, report.missing) == (2, ["nope"])
    manifest = BM25Manifest.load(path)
    assert [(p.deleted, p.num_deleted, p.num_docs) for p in manifest.docstore_parts] == [
        ("seg-000000.del-000002.npy", 2, 2998), ("seg-000001.del-000002.npy", 1, 1)]
    assert not (path / "seg-000000.del-000001.npy").exists()  # replaced by generation 2's
    assert stamp(path / DOCSTORE_NAME) == part0 and stamp(path / "seg-000001.docstore.sqlite") == part1
    assert not any(name.endswith(".sqlite") for name in hashed)  # no part read whole
    assert {name for name in hashed if name.startswith("seg-")} == {"seg-000000.del-000002.npy",
                                                                    "seg-000001.del-000002.npy"}
    new_store_bytes = sum((path / name).stat().st_size for name in manifest.files
                          if name.startswith("seg-") and stamp(path / name)[0] != part0[0])
    assert new_store_bytes < part0[2] / 10  # the change's bytes, not the corpus'

    # Upsert of an id whose live copy is in a later part: found there, its row deleted there.
    add_documents(path, [doc("d5", ["gamma", "gamma"])])
    store = open_docstore(path, BM25Manifest.load(path))
    try:
        assert store.get("d5") is not None and store.get("d5").text == "gamma gamma"
        assert store.get("d7") is None and store.get("n1") is None and len(store) == 2999
    finally:
        store.close()
    assert_same_as_rebuild(path, tmp_path)
    # part 1 has no live document left: dropped, its files no longer in the folder
    assert [p.id for p in BM25Manifest.load(path).docstore_parts] == [0, 3]
    assert not [name for name in os.listdir(path) if name.startswith("seg-000001.")]
    assert "document store: 2 parts" in verify_index(path).notes


def test_compact_writes_one_store_again(tmp_path):
    path = build_bm25_index(corpus(6), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    add_documents(path, [doc("n1", ["omega"])])
    remove_documents(path, ["d0", "d3"])
    before = live_documents(path)
    report = compact_index(path)
    assert report.num_docs == 5
    manifest = BM25Manifest.load(path)
    assert manifest.docstore_parts == [] and manifest.generation == 3  # file names are never given twice
    assert sorted(name for name in os.listdir(path) if "sqlite" in name or name.endswith(".npy")) == [DOCSTORE_NAME]
    store = DocStore(path / DOCSTORE_NAME)
    try:
        assert list(store.ids_by_row().items()) == [(row, d.id) for row, d in enumerate(before)]  # renumbered
    finally:
        store.close()
    assert_same_as_rebuild(path, tmp_path)
    verify_index(path)
    add_documents(path, [doc("n2", ["alpha"])])  # and the next update starts a part list again
    assert [p.id for p in BM25Manifest.load(path).docstore_parts] == [0, 4]
    assert_same_as_rebuild(path, tmp_path)


def test_everything_removed_then_added_again(tmp_path):
    path = build_bm25_index(corpus(2), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    remove_documents(path, ["d0", "d1"])
    assert BM25Manifest.load(path).num_docs == 0 and live_documents(path) == []
    assert_same_as_rebuild(path, tmp_path)
    verify_index(path)
    add_documents(path, [doc("d0", ["beta"])])
    assert [d.id for d in live_documents(path)] == ["d0"]
    assert_same_as_rebuild(path, tmp_path)


def test_folder_updated_in_place_before_parts_opens_and_updates(tmp_path):
    """The layout the previous update wrote: one docstore.sqlite changed in place (rows deleted, new rows
    appended), bm25s segments recorded, no parts. Made here from today's folder, its parts flattened back."""
    path = build_bm25_index(corpus(5), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    add_documents(path, [doc("n1", ["omega", "alpha"]), doc("d2", ["delta"])])
    remove_documents(path, ["d4"])
    manifest = BM25Manifest.load(path)
    flat = tmp_path / "flat.sqlite"
    live = open_docstore(path, manifest)
    store = DocStore(flat, readonly=False)
    try:
        rows, documents = zip(*live.iter_documents(), strict=True)
        store.add(list(rows), list(documents))
    finally:
        store.close()
        live.close()
    for part in manifest.docstore_parts:
        for name in part.files():
            (path / name).unlink()
    os.replace(flat, path / DOCSTORE_NAME)
    manifest.docstore_parts, manifest.generation, manifest.format_version = [], 0, 2
    manifest.record_files(path)
    manifest.save(path)
    saved = json.loads((path / "manifest.json").read_text())
    assert "docstore_parts" not in saved and "generation" not in saved  # as the previous version wrote it

    assert_same_as_rebuild(path, tmp_path)  # opens unchanged
    verify_index(path)
    add_documents(path, [doc("n2", ["sigma", "beta"]), doc("d1", ["beta"])])
    remove_documents(path, ["d0"])
    parts = BM25Manifest.load(path).docstore_parts
    assert [(p.docstore, p.row_stop) for p in parts][:1] == [(DOCSTORE_NAME, 7)]  # up to its highest row, 6
    assert parts[1].row_start == 7
    assert_same_as_rebuild(path, tmp_path)
    verify_index(path)


def test_info_shows_parts_and_verify_finds_damage(tmp_path, capsys):
    from embedkit.cli import main

    path = build_bm25_index(corpus(4), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    add_documents(path, [doc("n1", ["omega"])])
    remove_documents(path, ["d0"])
    assert main(["index", "info", str(path)]) == 0
    status = json.loads(capsys.readouterr().out)["status"]
    assert [(p["file"], p["documents"], p["deleted_fraction"]) for p in status["docstore_parts"]] == [
        (DOCSTORE_NAME, 3, 0.25), ("seg-000001.docstore.sqlite", 1, 0.0)]
    assert all(p["bytes"] > 0 for p in status["docstore_parts"]) and status["generation"] == 2

    # A row deleted behind the manifest's back (checksums re-recorded, so only the counts can tell).
    store = DocStore(path / "seg-000001.docstore.sqlite", readonly=False)
    store.delete_rows([4])
    store.close()
    manifest = BM25Manifest.load(path)
    manifest.record_files(path)
    manifest.save(path)
    with pytest.raises(IndexFormatError, match="seg-000001.docstore.sqlite holds 0 documents, the manifest "
                                               "records 1"):
        verify_index(path)
    assert main(["index", "verify", str(path)]) == 2


@pytest.mark.parametrize("name", ["../docstore.sqlite", "seg-000002.docstore.sqlite", "/tmp/x.sqlite"])
def test_manifest_naming_a_part_elsewhere_is_refused(tmp_path, name):
    path = build_bm25_index(corpus(2), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    add_documents(path, [doc("n1", ["omega"])])
    data = json.loads((path / "manifest.json").read_text())
    data["docstore_parts"][1]["docstore"] = name  # part 1 may only be seg-000001.docstore.sqlite
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="is not a name embedkit gives a document-store part"):
        BM25Manifest.load(path)


@needs_java
def test_pyserini_update_links_the_store_and_compact_keeps_rows(tmp_path):
    path = build_bm25_index(corpus(8), tmp_path / "idx", BM25Settings(backend="pyserini", merge=NEVER))
    part0 = stamp(path / DOCSTORE_NAME)
    add_documents(path, [doc("n1", ["omega", "alpha"]), doc("d1", ["sigma"])])
    remove_documents(path, ["d2"])
    assert stamp(path / DOCSTORE_NAME) == part0
    assert [(p.docstore, p.num_docs) for p in BM25Manifest.load(path).docstore_parts] == [
        (DOCSTORE_NAME, 6), ("seg-000001.docstore.sqlite", 2)]
    before = {d.id for d in live_documents(path)}
    compact_index(path)
    store = DocStore(path / DOCSTORE_NAME)
    try:
        ids = store.ids_by_row()
    finally:
        store.close()
    assert set(ids.values()) == before and max(ids) == 9  # rows kept (Lucene finds documents by id)
    assert_same_as_rebuild(path, tmp_path)
    verify_index(path)


def test_a_crafted_deletion_file_is_damage_not_code(tmp_path):
    """A shared folder's deletion file holding a pickle (which numpy would run) or rows outside its part."""
    import numpy as np

    path = build_bm25_index(corpus(3), tmp_path / "idx", BM25Settings(backend="bm25s", merge=NEVER))
    remove_documents(path, ["d1"])
    name = BM25Manifest.load(path).docstore_parts[0].deleted
    assert name == "seg-000000.del-000001.npy"
    for rows, needle in ((np.array([{"x": 1}], dtype=object), "is not a saved array of row numbers"),
                         (np.array([7], dtype=np.int64), "outside the index's rows")):
        np.save(path / name, rows, allow_pickle=True)
        manifest = BM25Manifest.load(path)
        manifest.record_files(path)  # a manifest can be made to match anything: the file itself is checked
        manifest.save(path)
        with pytest.raises(IndexFormatError, match=needle):
            live_documents(path)
        with pytest.raises(IndexFormatError, match=needle):
            add_documents(path, [doc("d1", ["beta"])])
