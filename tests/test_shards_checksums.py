"""Issue 22, item 7: every file of an encode part is checksummed (size + SHA-256) when written and checked on
resume and by `embedkit index merge`; a crash at every step of a part write resumes to the uninterrupted output.

All through the CLI (`python -m embedkit encode …` / `index merge …` in subprocesses) on a tiny random BERT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedkit.encoding.shards import PART_STEPS, Checkpoint, checkpoint_path, open_shards, read_part
from tests.helpers import write_jsonl
from tests.test_index_integrity import assert_user_error, embedkit

pytestmark = pytest.mark.slow  # encoding subprocesses

PART_SIZE = 20
DOCS = 50  # parts 0, 1 (20 documents each) and 2 (10)
WORDS = "protein cell gene cancer virus dna rna study patients treatment disease blood brain heart risk".split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from embedkit.training.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("model") / "tiny", seed=5, hidden_size=32, layers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    records = [{"_id": f"doc{i:02d}", "title": f"t{i % 7}",
                "text": " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3 + i % 9))} for i in range(DOCS)]
    records[7]["text"] += " line\u2028separator"  # raw in the part's jsonl: the reader must split on \n only
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", records)


def encode(corpus: Path, model: Path, out: Path, env: dict[str, str] | None = None):
    return embedkit("encode", "--corpus", corpus, "--model", model, "--out", out, "--part-size", PART_SIZE,
                    "--batch-size", 8, "--device", "cpu", "-q", env={"OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_model, corpus) -> Path:
    """An uninterrupted encode, and the index merged from it (`clean.parent / "index"`)."""
    out = tmp_path_factory.mktemp("clean") / "shards"
    result = encode(corpus, tiny_model, out)
    assert result.returncode == 0, result.stderr
    merged = embedkit("index", "merge", out, "--out", out.parent / "index")
    assert merged.returncode == 0, merged.stderr
    return out


@pytest.fixture
def shards(clean, tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(clean, copy, ignore=shutil.ignore_patterns(".*.lock"))
    return copy


def part_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("part-*"))}


def checkpoint(folder: Path) -> Checkpoint:
    return Checkpoint.model_validate_json(checkpoint_path(folder, 0, 1).read_text())


def assert_same_as_clean(folder: Path, clean: Path) -> None:
    """Same parts, same records, same bytes, no leftovers, and the same merged index."""
    assert checkpoint(folder).parts == checkpoint(clean).parts
    assert checkpoint(folder).done and checkpoint(folder).documents == DOCS
    assert part_files(folder) == part_files(clean)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in clean.iterdir() if not p.name.startswith("."))
    merged = embedkit("index", "merge", folder, "--out", folder.parent / "index")
    assert merged.returncode == 0, merged.stderr
    assert (folder.parent / "index" / "index.faiss").read_bytes() == \
        (clean.parent / "index" / "index.faiss").read_bytes()


def test_records_hold_size_and_sha256_of_every_part_file(clean) -> None:
    record = checkpoint(clean)
    assert record.format_version == 2 and sorted(record.parts) == [0, 1, 2]
    for part, entry in record.parts.items():
        assert set(entry.files) == {f"part-{part:08d}.jsonl", f"part-{part:08d}.npy"}
        for name, digest in entry.files.items():
            assert digest.size == (clean / name).stat().st_size
    docs, vectors = read_part(clean, 0, record.parts[0])
    assert len(docs) == len(vectors) == PART_SIZE and "\u2028" in docs[7].text


def test_an_edited_id_is_refused_by_merge_and_encoded_again_on_resume(shards, clean, tiny_model, corpus) -> None:
    part = shards / "part-00000001.jsonl"
    edited = part.read_text(encoding="utf-8").replace('"doc25"', '"dod25"')  # same size: only the checksum tells
    assert edited != part.read_text(encoding="utf-8")
    part.write_text(edited, encoding="utf-8")
    result = embedkit("index", "merge", shards, "--out", shards.parent / "index")
    assert_user_error(result, str(part), "does not match the checksum", "embedkit encode")
    assert not (shards.parent / "index").exists()

    resumed = encode(corpus, tiny_model, shards)
    assert resumed.returncode == 0, resumed.stderr
    assert str(part) in resumed.stderr and "encoding part 1 again" in resumed.stderr
    assert_same_as_clean(shards, clean)


@pytest.mark.parametrize("name", ["part-00000002.jsonl", "part-00000000.npy"])
def test_a_truncated_or_missing_part_file_is_refused_naming_it(shards, name) -> None:
    path = shards / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = embedkit("index", "merge", shards, "--out", shards.parent / "index")
    assert_user_error(result, str(path), "cut short")
    assert "JSONDecodeError" not in result.stderr
    path.unlink()
    assert_user_error(embedkit("index", "merge", shards, "--out", shards.parent / "index"), str(path), "missing")


def test_a_checkpoint_naming_files_outside_the_part_is_refused(shards, tmp_path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"id": "x", "title": "", "text": "not from this folder"}\n')
    data = json.loads(checkpoint_path(shards, 0, 1).read_text())
    files = data["parts"]["0"]["files"]
    files["../outside.jsonl"] = files.pop("part-00000000.jsonl")
    checkpoint_path(shards, 0, 1).write_text(json.dumps(data))
    result = embedkit("index", "merge", shards, "--out", shards.parent / "index")
    assert_user_error(result, "part-00000000 is damaged", "'../outside.jsonl'")


def legacy(folder: Path) -> None:
    """Rewrite the checkpoint as embedkit wrote it before checksums: [documents, sha256 of the .npy]."""
    data = json.loads(checkpoint_path(folder, 0, 1).read_text())
    del data["format_version"]
    data["parts"] = {part: [entry["documents"], entry["files"][f"part-{int(part):08d}.npy"]["sha256"]]
                     for part, entry in data["parts"].items()}
    checkpoint_path(folder, 0, 1).write_text(json.dumps(data))


def test_folders_written_before_checksums_stay_readable(shards, clean, tiny_model, corpus) -> None:
    legacy(shards)
    assert open_shards(shards).num_docs == DOCS
    merged = embedkit("index", "merge", shards, "--out", shards.parent / "index")
    assert merged.returncode == 0, merged.stderr
    assert "read unchecked" in merged.stderr  # said, not hidden
    assert (shards.parent / "index" / "index.faiss").read_bytes() == \
        (clean.parent / "index" / "index.faiss").read_bytes()

    resumed = encode(corpus, tiny_model, shards)  # a finished old folder: nothing to encode, entries kept
    assert resumed.returncode == 0, resumed.stderr
    assert all(isinstance(entry, tuple) for entry in checkpoint(shards).parts.values())
    assert part_files(shards) == part_files(clean)

    part = shards / "part-00000001.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:4]) + lines[4][:15])  # a cut line: was a JSONDecodeError traceback
    result = embedkit("index", "merge", shards, "--out", shards.parent / "index2")
    assert_user_error(result, f"{part}, line 5", "malformed JSON")


def test_a_crash_at_every_step_of_a_part_write_resumes_to_the_uninterrupted_output(tmp_path, clean, tiny_model,
                                                                                   corpus) -> None:
    out = tmp_path / "shards"
    for step in PART_STEPS:  # each crash run resumes the state the previous crash left
        crashed = encode(corpus, tiny_model, out, env={"EMBEDKIT_CRASH_AT": step})
        assert crashed.returncode == 137, (step, crashed.returncode, crashed.stderr[-2000:])
        state = checkpoint(out) if checkpoint_path(out, 0, 1).exists() else None
        assert state is None or not state.done
        for part, entry in (state.parts if state else {}).items():
            read_part(out, part, entry)  # every recorded part is complete and matches its record
        if step == "part-docs-filling":
            assert list(out.glob("part-00000000.jsonl.tmp-*")), "the crash must land inside the file write"
        if step == "shard-parts-recorded":
            assert state is not None and sorted(state.parts) == [0, 1, 2]
    resumed = encode(corpus, tiny_model, out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as_clean(out, clean)


def test_resuming_after_the_corpus_changed_is_refused(tmp_path, tiny_model, corpus) -> None:
    out, mine = tmp_path / "shards", shutil.copy(corpus, tmp_path / "corpus.jsonl")
    crashed = encode(mine, tiny_model, out, env={"EMBEDKIT_CRASH_AT": "part-recorded"})  # part 0 is recorded
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    mine.write_text(corpus.read_text(encoding="utf-8").replace('"doc03"', '"doc03b"'), encoding="utf-8")
    assert_user_error(encode(mine, tiny_model, out), "the corpus changed", "part-00000000")


def test_an_out_path_that_is_a_file_is_refused(tmp_path, tiny_model, corpus) -> None:
    (tmp_path / "afile").write_text("mine")
    assert_user_error(encode(corpus, tiny_model, tmp_path / "afile"), "is a file, not a folder")
    assert_user_error(encode(corpus, tiny_model, tmp_path / "afile" / "sub"), "cannot create the shard folder")
    assert (tmp_path / "afile").read_text() == "mine"
