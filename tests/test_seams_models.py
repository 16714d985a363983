"""The model folders embedkit writes, used by the projects they claim to plug into, as those projects' users use
them: every folder (BOOM bags, merges and updates, `embedkit train` outputs, Agentic-R retrievers) loads with
plain `SentenceTransformer(path)` and encodes exactly as embedkit's `Encoder` does; the `mergekit_config.yml` a
merge writes reruns with the documented command into the same sentence-transformers model; plain
`mergekit-yaml` on it still hits mergekit 0.1.5's bug (this test fails the day an upstream release fixes it);
images are read by qwen-vl-utils or, chosen explicitly, by PIL with the same resize — never by PIL unasked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedkit.cli import main
from embedkit.training.tiny import build_tiny_bert
from tests.helpers import TOPIC_TRIPLES
from tests.test_index_integrity import ROOT, assert_user_error

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # trains, merges, runs commands

PAIRS = TOPIC_TRIPLES
QUERIES = ["what protein is in the cell", "who was the king of the country"]
PASSAGES = ["the protein of the cell and its gene", "the capital city of the country was founded by the king"]
TRAINING = {"batch_size": 2, "learning_rate": 1e-2, "device": "cpu", "max_steps": 1, "warmup_ratio": 0.0}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_python(*args: str | Path, timeout: int = 600, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> subprocess.CompletedProcess:  # fmt: skip
    """A command line as a user runs it (`python -m …`, a console script), in a fresh process; `env` replaces
    the environment (PYTHONPATH and TQDM_DISABLE are added)."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """One folder of every kind embedkit writes, each made by its own command on a tiny BERT."""
    pytest.importorskip("mergekit")
    root = tmp_path_factory.mktemp("seams")
    base = build_tiny_bert(root / "base", seed=0, pooling="cls", prompts={"query": "query: ", "document": ""})
    old = _jsonl(root / "old.jsonl", [{"query": q, "pos": [p], "neg": [n]} for q, p, n in PAIRS[:4]])
    new = _jsonl(root / "new.jsonl", [{"query": q, "pos": [p]} for q, p, _ in PAIRS[4:]])

    boom = root / "boom.yaml"
    boom.write_text(yaml.safe_dump({"model": str(base), "output_dir": str(root / "boom"), "bags": [60, 100],
                                    "datasets": [{"name": "old", "path": str(old)}], "training": TRAINING}))
    assert main(["boom", "train", "--config", str(boom), "-q"]) == 0  # multislerp, BOOM's default
    assert main(["boom", "update", "--base", str(root / "boom" / "model"), "--new-data", str(new),
                 "--history", str(old), "--output-dir", str(root / "update"), "--batch-size", "2",
                 "--max-steps", "1", "--device", "cpu", "-q"]) == 0  # fmt: skip

    train = root / "train.yaml"
    train.write_text(yaml.safe_dump({"model": str(base), "output_dir": str(root / "trained"),
                                     "datasets": [{"name": "t1", "path": str(old), "instruction": "find the passage"}],
                                     **TRAINING}))  # fmt: skip
    assert main(["train", "--config", str(train)]) == 0

    pairs = _jsonl(root / "pairs.jsonl", [
        {"qid": f"q{i}", "turn": 0, "query": f"{q} [SEP] {q}", "positives": [{"id": f"p{i}", "text": p}],
         "negatives": [{"id": f"n{i}", "text": n}]} for i, (q, p, n) in enumerate(PAIRS)])  # fmt: skip
    assert main(["agentic-r", "train", "--pairs", str(pairs), "--out", str(root / "retriever"), "--base-model",
                 str(base), "--epochs", "1", "--batch-size", "2", "--set", "hard_negatives=1"]) == 0  # fmt: skip
    return {
        "boom bag": root / "boom" / "bags" / "bag-0",
        "boom merge": root / "boom" / "model",
        "boom update model": root / "update" / "update",
        "boom update merge": root / "update" / "model",
        "embedkit train": root / "trained",
        "agentic-r retriever": root / "retriever" / "model",
    }


KINDS = ["boom bag", "boom merge", "boom update model", "boom update merge", "embedkit train", "agentic-r retriever"]


@pytest.mark.parametrize("kind", KINDS)
def test_sentence_transformers_loads_and_encodes_as_embedkit(written, kind):
    from sentence_transformers import SentenceTransformer

    from embedkit.data import Document
    from embedkit.encoding import Encoder, EncoderConfig

    path = written[kind]
    plain = SentenceTransformer(str(path), device="cpu")
    encoder = Encoder(EncoderConfig(model=str(path), device="cpu"))
    np.testing.assert_allclose(plain.encode_query(QUERIES), encoder.encode_queries(QUERIES), atol=1e-5)
    documents = [Document(id=str(i), text=p) for i, p in enumerate(PASSAGES)]
    np.testing.assert_allclose(plain.encode_document(PASSAGES), encoder.encode_documents(documents), atol=1e-5)
    assert encoder.spec.pooling == _pooling(plain)


def test_agentic_r_retriever_carries_its_prefixes(written):
    """Trained on "query: "/"passage: " inputs (the e5 defaults), the folder says so to every user of it."""
    from sentence_transformers import SentenceTransformer

    prompts = SentenceTransformer(str(written["agentic-r retriever"]), device="cpu").prompts
    assert prompts["query"] == "query: " and prompts["document"] == "passage: "


def _pooling(model) -> str:
    from sentence_transformers.sentence_transformer.modules import Pooling

    return next(m for m in model if isinstance(m, Pooling)).get_config_dict()["pooling_mode"]


def _modules(path: Path) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]


def test_the_written_recipe_reruns_with_the_documented_command(written, tmp_path):
    """The command in the recipe's header rebuilds the merged model: same modules, same vectors."""
    from sentence_transformers import SentenceTransformer

    merged = written["boom merge"]
    recipe = merged / "mergekit_config.yml"
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    command = next(line.strip("# ").split()[:4] for line in header if "python -m" in line)
    assert command == ["python", "-m", "embedkit.merging.mergekit_yaml", "mergekit_config.yml"]

    out = tmp_path / "remerged"
    result = run_python(sys.executable, "-m", "embedkit.merging.mergekit_yaml", recipe, out, "--lazy-unpickle")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merged -> " in result.stdout and "mergekit-yaml --lazy-unpickle" in result.stdout
    assert _modules(out) == _modules(merged) == ["Transformer", "Pooling", "Normalize"]
    again, original = SentenceTransformer(str(out), device="cpu"), SentenceTransformer(str(merged), device="cpu")
    assert _pooling(again) == _pooling(original) == "cls" and again.prompts == original.prompts
    for encode in ("encode_query", "encode_document"):
        np.testing.assert_allclose(getattr(again, encode)(QUERIES), getattr(original, encode)(QUERIES), atol=1e-6)


def test_the_recipe_command_reports_user_errors_in_one_line(written, tmp_path, capsys):
    """An existing output is refused unless --overwrite, and mergekit-yaml's own usage errors are reported the
    same way: exit 2, one `embedkit: error:` line (the command's main, in this process)."""
    from embedkit.merging import mergekit_yaml

    recipe = written["boom merge"] / "mergekit_config.yml"
    (tmp_path / "taken").mkdir()
    for argv, needles in [([recipe, tmp_path / "taken"], ["exists"]),
                          ([recipe, tmp_path / "x", "--no-such-mergekit-option"], ["mergekit-yaml", "no-such-mergekit-option"]),
                          ([tmp_path / "missing.yml", tmp_path / "y"], ["missing.yml"])]:  # fmt: skip
        assert mergekit_yaml.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("embedkit: error: ") and err.count("\n") == 1 and all(n in err for n in needles), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_recipe_with_relative_paths_runs_where_they_point(written, tmp_path):
    """Relative model paths are read from the working directory, as mergekit-yaml reads them; an "org/name"-
    shaped one (bags/bag-0) is a folder here, not a hub id (mergekit's model card would ask the hub)."""
    boom = written["boom merge"].parent
    recipe = tmp_path / "relative.yml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": "bags/bag-0", "parameters": {"weight": 0.5}}, {"model": "bags/bag-1", "parameters": {"weight": 0.5}}]}))
    result = run_python(sys.executable, "-m", "embedkit.merging.mergekit_yaml", recipe, tmp_path / "out", cwd=boom)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _modules(tmp_path / "out") == _modules(boom / "bags" / "bag-0")
    assert "bags/bag-0" in (tmp_path / "out" / "mergekit_config.yml").read_text()  # the recipe as written


def test_plain_mergekit_yaml_still_needs_the_command(written, tmp_path):
    """mergekit's own CLI on the recipe. Up to compat.LAST_AFFECTED (0.1.5) it crashes on BERT with the list +
    tuple bug that embedkit/merging/compat.py patches; a newer mergekit must merge (if it still crashes, raise
    LAST_AFFECTED), yet writes no pooling/normalization modules, so the documented command stays the way."""
    from embedkit.merging import compat

    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    result = run_python(mergekit_yaml, written["boom merge"] / "mergekit_config.yml", tmp_path / "plain")
    if compat.mergekit_version() <= compat.LAST_AFFECTED:
        assert result.returncode != 0
        assert 'TypeError: can only concatenate list (not "tuple") to list' in result.stderr, result.stderr[-2000:]
    else:  # a fixed mergekit merges the transformer, but not the sentence-transformers modules
        assert result.returncode == 0, result.stderr[-2000:]
        assert not (tmp_path / "plain" / "modules.json").exists()


# ---- images: qwen-vl-utils, or PIL when chosen -----------------------------------------------------------------
def _picture(path: Path, size=(100, 60), mode="RGB", colour=(200, 30, 30)) -> Path:
    from PIL import Image

    Image.new(mode, size, colour).save(path)
    return path


def test_image_path_refuses_when_qwen_vl_utils_cannot_import(tmp_path):
    """Here qwen-vl-utils is installed but imports torchvision, which CPU machines lack: reading an image says
    so and how to choose PIL (exit 2, one line) instead of silently reading it another way."""
    import importlib.util

    picture = _picture(tmp_path / "pic.png")
    env = {k: v for k, v in os.environ.items() if k != "EMBEDKIT_IMAGE_READER"}
    command = [sys.executable, "-m", "embedkit", "cocoa", "show-mask", "--stage", "1", "--image", picture,
               "--text", "a red box"]  # fmt: skip
    result = run_python(*command, env=env)
    if importlib.util.find_spec("torchvision") is None:
        assert_user_error(result, "qwen-vl-utils", "torchvision", "embedkit[vl]", "EMBEDKIT_IMAGE_READER=pil")
    else:  # a machine with embedkit[vl]: Qwen's reader runs
        assert result.returncode == 0, result.stderr[-2000:]


def test_an_unknown_image_reader_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBEDKIT_IMAGE_READER", "torchvision")
    assert main(["cocoa", "show-mask", "--stage", "1", "--image", str(_picture(tmp_path / "pic.png")),
                 "--text", "a red box"]) == 2  # fmt: skip
    assert "EMBEDKIT_IMAGE_READER='torchvision': choose one of qwen-vl-utils, pil" in capsys.readouterr().err


def test_pil_reader_resizes_to_the_pixel_bounds_as_qwen_does(tmp_path, monkeypatch):
    """With EMBEDKIT_IMAGE_READER=pil the image comes back at Qwen2-VL's smart_resize size for the bounds (whole
    patches, aspect kept), transparent pixels white as qwen-vl-utils makes them; without bounds, unchanged."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from embedkit.multimodal.images import load_image

    monkeypatch.setenv("EMBEDKIT_IMAGE_READER", "pil")
    picture = _picture(tmp_path / "pic.png", size=(100, 60))
    assert load_image(str(picture)).size == (100, 60)
    for low, high in [(64, 256), (500, 1500), (2000, 10_000)]:
        image = load_image(str(picture), min_pixels=low, max_pixels=high, patch_size=4, merge_size=2)
        height, width = smart_resize(60, 100, factor=8, min_pixels=low, max_pixels=high)
        assert image.size == (width, height) and width * height <= high and width % 8 == height % 8 == 0
    small = load_image(str(_picture(tmp_path / "small.png", size=(6, 5))), min_pixels=64 * 64, max_pixels=128 * 128,
                       patch_size=14, merge_size=2)  # fmt: skip
    assert small.size[0] * small.size[1] >= 64 * 64  # scaled up to min_pixels, in 28-pixel steps
    clear = _picture(tmp_path / "clear.png", size=(32, 32), mode="RGBA", colour=(10, 20, 30, 0))
    assert load_image(str(clear), min_pixels=64, max_pixels=1024, patch_size=4).getpixel((5, 5)) == (255, 255, 255)


def test_pil_reader_images_reach_the_processor_at_their_target_size(tmp_path, monkeypatch):
    """The embedder's min/max pixels reach the reader: the processor's patch grid is the reader's image size."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from embedkit.multimodal.sequence import MultimodalInput, VisionTokens, encode_batch
    from embedkit.multimodal.tiny import build_tokenizer

    monkeypatch.setenv("EMBEDKIT_IMAGE_READER", "pil")
    processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                         size={"shortest_edge": 64, "longest_edge": 64 * 64})  # fmt: skip
    tokenizer = build_tokenizer()
    picture = _picture(tmp_path / "pic.png", size=(100, 60))
    for low, high in [(64, 256), (512, 1024)]:
        batch = encode_batch([MultimodalInput(image=str(picture), text="a red box")], tokenizer, processor,
                             VisionTokens.from_tokenizer(tokenizer), min_pixels=low, max_pixels=high, max_length=512)
        t, h, w = batch.image_grid_thw[0].tolist()
        assert low <= h * 4 * w * 4 <= high


def test_the_vl_extra_brings_torchvision_and_nothing_here_installs_it():
    """qwen-vl-utils imports torchvision, so `embedkit[vl]` declares it; the CPU installs (`dev`, `demo`, the
    Makefile's) must never pull it."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def closure(name: str) -> set[str]:
        names: set[str] = set()
        for requirement in extras[name]:
            nested = re.fullmatch(r"embedkit\[([\w,-]+)\]", requirement.replace(" ", ""))
            if nested:
                names |= {n for sub in nested.group(1).split(",") for n in closure(sub)}
            else:
                names.add(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower())
        return names

    assert {"qwen-vl-utils", "torchvision"} <= closure("vl")
    installed = set(re.findall(r"\.\[([\w,-]+)\]", (ROOT / "Makefile").read_text()))
    assert installed and {"dev", "demo"} <= {n for group in installed for n in group.split(",")}
    for group in installed:
        for name in group.split(","):
            assert "torchvision" not in closure(name), name
