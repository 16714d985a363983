"""The index model: typed manifests and their migration, the kind registry, the atomic folder writer, imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit.data.corpus import Document
from embedkit.encoding.config import EncoderSpec
from embedkit.errors import EmbedkitError, IndexFormatError
from embedkit.index import INDEX_KINDS, BM25Manifest, DenseManifest, Index, IndexManifest
from embedkit.index.dense import write_dense_index
from embedkit.io import atomic_directory, leftovers, recover_folder

ROOT = Path(__file__).resolve().parent.parent
DIM = 8
SPEC = EncoderSpec(model="test/vectors", fingerprint="f" * 16, pooling="mean", normalize=True, dim=DIM)


def vectors(count: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec " \
        "romeo sierra tango".split()


def documents(count: int) -> list[Document]:
    return [Document(id=f"d{i}", title=f"t{i}", text=f"text {WORDS[i]}") for i in range(count)]


@pytest.fixture
def dense(tmp_path) -> Path:
    return write_dense_index(tmp_path / "dense", vectors(20), documents(20), SPEC, factory="HNSW8")


def to_format_1(manifest: dict) -> dict:
    """What embedkit 0.1 wrote: settings as a free dict, sizes without checksums."""
    old = {key: manifest[key] for key in ("kind", "num_docs", "corpus", "embedkit_version", "created_at", "history")}
    old["format_version"] = 1
    old["files"] = {name: record["size"] for name, record in manifest["files"].items()}
    if manifest["kind"] == "dense":
        old.update(encoder=manifest["encoder"], metric=manifest["metric"], index_factory=manifest["index_factory"])
        search = {k: v for k, v in manifest["search"].items() if k != "calibration" and v is not None}
        search["calibration"] = manifest["search"]["calibration"]
        old["settings"] = {"train_sample": 0, "search": search}  # no next_row: the oldest layout
    else:
        old["settings"] = {**manifest["settings"], **{k: v for k, v in manifest["backend_info"].items() if v}}
    return old


def test_format_1_dense_manifest_migrates_and_stays_updatable(dense):
    from embedkit.index.lifecycle import add_vectors, remove_documents

    current = json.loads((dense / "manifest.json").read_text())
    (dense / "manifest.json").write_text(json.dumps(to_format_1(current)))
    manifest = IndexManifest.load(dense)
    assert isinstance(manifest, DenseManifest)
    assert manifest.next_row == 20 and manifest.search.ef_search == current["search"]["ef_search"]
    assert all(record.sha256 is None for record in manifest.files.values())
    index = Index.load(dense)
    assert index.search_vectors(vectors(20)[3], k=1)[0][0].id == "d3"
    remove_documents(dense, ["d0"])
    add_vectors(dense, [Document(id="new", text="n")], vectors(1, seed=9))
    saved = json.loads((dense / "manifest.json").read_text())
    # converted in place to segments (format 3); its files got the checksums format 1 lacked
    assert saved["format_version"] == 3 and saved["next_row"] == 21 and "settings" not in saved
    assert all(record["sha256"] for record in saved["files"].values())


def test_format_1_bm25_manifest_migrates(tmp_path):
    pytest.importorskip("bm25s")
    from embedkit.lexical import BM25Settings, build_bm25_index

    out = build_bm25_index(documents(5), tmp_path / "bm25", BM25Settings(backend="bm25s", k1=1.1))
    current = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(to_format_1(current)))
    manifest = IndexManifest.load(out)
    assert isinstance(manifest, BM25Manifest)
    assert manifest.settings.k1 == 1.1 and manifest.backend_info.bm25s_version
    assert Index.load(out).search("delta", k=1)[0][0].id == "d3"


def test_manifest_fields_are_typed(dense):
    data = json.loads((dense / "manifest.json").read_text())
    data["metric"] = "cosine"
    (dense / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="field 'dense.metric'"):
        IndexManifest.load(dense)
    data["metric"], data["kind"] = "ip", "graph"
    (dense / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="damaged"):
        IndexManifest.load(dense)


def test_kind_registry_and_typed_open_options(dense):
    assert INDEX_KINDS.names() == ["bm25", "dense"]
    with pytest.raises(EmbedkitError, match="unknown index kind 'graph'; choose one of: bm25, dense"):
        INDEX_KINDS.get("graph")
    with pytest.raises(EmbedkitError, match="batch_size"):
        Index.load(dense, batch_size=0)
    with pytest.raises(EmbedkitError, match="not an option"):
        Index.load(dense, nprob=4)
    with pytest.raises(EmbedkitError, match="at least 1"):
        Index.load(dense).search_vectors(vectors(1), k=0)


def test_hit_is_the_one_passage_type(dense):
    from embedkit.index import Hit
    from embedkit.passage import Passage

    assert Hit is Passage
    hit = Index.load(dense).search_vectors(vectors(20)[4], k=1)[0][0]
    assert isinstance(hit, Passage) and hit.contents == "t4\ntext echo"


# --- the atomic folder writer ---------------------------------------------------------------------------


def test_atomic_directory_overwrite_rules(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, marker="manifest.json", what="embedkit index") as tmp:
        (tmp / "manifest.json").write_text("{}")
    with pytest.raises(EmbedkitError, match="already exists"):
        with atomic_directory(target, marker="manifest.json"):
            pass
    with atomic_directory(target, overwrite=True, marker="manifest.json") as tmp:
        (tmp / "manifest.json").write_text('{"v": 2}')
    assert (target / "manifest.json").read_text() == '{"v": 2}'
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(EmbedkitError, match="has no manifest.json"):
        with atomic_directory(foreign, overwrite=True, marker="manifest.json"):
            pass
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text("half")
            raise RuntimeError("boom")
    assert (target / "manifest.json").read_text() == '{"v": 2}'
    assert leftovers(target) == {"tmp": [], "new": [], "old": []}


def test_symlink_stays_a_symlink_and_the_real_folder_is_replaced(tmp_path):
    real = tmp_path / "real"
    with atomic_directory(real, marker="v") as tmp:
        (tmp / "v").write_text("1")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with atomic_directory(link, overwrite=True, marker="v") as tmp:
        assert tmp.parent == real.parent and tmp.name.startswith("real.tmp-")
        (tmp / "v").write_text("2")
    assert link.is_symlink() and (link / "v").read_text() == "2" and (real / "v").read_text() == "2"


def test_recovery_rule(tmp_path):
    target = tmp_path / "idx"
    # killed between "old moved away" and "new moved in": the complete new state wins
    (tmp_path / "idx.old-1-0000aaaa").mkdir()
    (tmp_path / "idx.old-1-0000aaaa" / "v").write_text("old")
    (tmp_path / "idx.new-1-0000aaaa").mkdir()
    (tmp_path / "idx.new-1-0000aaaa" / "v").write_text("new")
    (tmp_path / "idx.tmp-2-0000bbbb").mkdir()
    assert recover_folder(target) == "rolled forward"
    assert (target / "v").read_text() == "new" and leftovers(target) == {"tmp": [], "new": [], "old": []}
    # only the old state left (killed while the new one was unfinished): restored
    target.rename(tmp_path / "idx.old-3-0000cccc")
    (tmp_path / "idx.tmp-3-0000cccc").mkdir()
    assert recover_folder(target) == "rolled back"
    assert (target / "v").read_text() == "new" and not any(leftovers(target).values())
    # a folder whose name merely starts like ours is not touched
    (tmp_path / "idx.tmp-notes").mkdir()
    assert recover_folder(target) is None and (tmp_path / "idx.tmp-notes").is_dir()


# --- structure --------------------------------------------------------------------------------------------


def _imports(path: Path, package_root: Path) -> set[str]:
    """Modules a file imports anywhere (inside functions too), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {id(inner) for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for inner in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("embedkit.")}


def test_no_import_cycles_in_the_index_packages():
    modules: dict[str, set[str]] = {}
    for package in ("index", "lexical", "hybrid"):
        for path in (ROOT / "embedkit" / package).glob("*.py"):
            name = f"embedkit.{package}.{path.stem}".removesuffix(".__init__")
            modules[name] = _imports(path, ROOT)
    graph = {name: {dep for dep in deps if dep in modules} for name, deps in modules.items()}

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        for dep in graph.get(node, ()):
            visit(dep, [*stack, node])

    for name in graph:
        visit(name, [])


def test_cli_modules_hold_all_argparse_code():
    for package in ("index", "lexical", "hybrid"):
        for path in (ROOT / "embedkit" / package).glob("*.py"):
            assert "argparse" not in path.read_text(), f"{path} has argparse code; it belongs in embedkit/cli/"


@pytest.mark.slow
def test_importing_the_cli_loads_no_heavy_library():
    code = ("import sys, embedkit.cli; embedkit.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
