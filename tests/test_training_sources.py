"""Training data from parquet and from the hub (`hf:NAME[/CONFIG][:SPLIT]`) beside jsonl; CoCoA's readers
take the same sources. The hub path is exercised through `datasets` on a local folder (no network)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedkit.cocoa.data import read_contrastive_pairs, read_pretrain_records
from embedkit.errors import DataFormatError
from embedkit.training import DatasetConfig, load_task
from embedkit.training.sources import HubSpec, iter_rows, parse_hub_spec

ROWS = [{"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"], "prompt": None},
        {"query": "q2", "pos": ["p2"], "neg": [], "prompt": "find it"}]


def test_hub_specs():
    assert parse_hub_spec("hf:BAAI/data") == HubSpec("BAAI/data", None, "train")
    assert parse_hub_spec("hf:BAAI/data:dev") == HubSpec("BAAI/data", None, "dev")
    assert parse_hub_spec("hf:TIGER-Lab/MMEB-train/ImageNet_1K:original") == HubSpec(
        "TIGER-Lab/MMEB-train", "ImageNet_1K", "original")
    assert parse_hub_spec("hf:org/name", default_split="test").split == "test"
    with pytest.raises(DataFormatError, match="hf:ORG/NAME"):
        parse_hub_spec("hf:a/b/c/d")


def test_parquet_training_data(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    task = load_task(DatasetConfig(name="t", path=str(path)))
    assert [(g.query, g.positives, g.negatives, g.instruction) for g in task.groups] == [
        ("q1", ("p1",), ("n1", "n2"), None), ("q2", ("p2",), (), "find it")]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": "q", "pos": []}]), bad)
    with pytest.raises(DataFormatError, match="bad.parquet, line 1"):
        load_task(DatasetConfig(name="b", path=str(bad)))


def test_hub_training_data_through_datasets(tmp_path):
    folder = tmp_path / "hubdata" / "data"
    folder.mkdir(parents=True)
    # sentence-transformers column names, as many hub datasets have them.
    pq.write_table(pa.Table.from_pylist([{"anchor": "q1", "positive": "p1", "negative": "n1"}]),
                   folder / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"anchor": "q9", "positive": "p9", "negative": "n9"}]),
                   folder / "dev-00000-of-00001.parquet")
    task = load_task(DatasetConfig(name="h", path=f"hf:{tmp_path / 'hubdata'}"))
    assert [(g.query, g.positives, g.negatives) for g in task.groups] == [("q1", ("p1",), ("n1",))]
    dev = load_task(DatasetConfig(name="h", path=f"hf:{tmp_path / 'hubdata'}:dev"))
    assert dev.groups[0].query == "q9"
    with pytest.raises(DataFormatError, match="cannot load the hub dataset"):
        list(iter_rows(f"hf:{tmp_path / 'hubdata'}:nosuchsplit"))


def test_cocoa_readers_take_parquet_with_image_bytes(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    path = tmp_path / "pre.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"text": "a red square", "image": {"bytes": buffer.getvalue(), "path": None}, "description": "red"},
        {"text": "only text", "image": None, "description": None}]), path)
    records = read_pretrain_records(path)
    assert records[0].description == "red" and records[1].image is None
    from embedkit.multimodal.images import load_image

    assert load_image(records[0].image).getpixel((0, 0)) == (255, 0, 0)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"qry": "<|image_1|> find", "qry_image_path": "q.png", "pos_text": "cat",
                                          "pos_image_path": "", "neg_text": "dog", "neg_image_path": ""}]), pairs)
    [pair] = read_contrastive_pairs(pairs)
    assert pair.query.text == "find" and pair.positive.text == "cat" and pair.negatives[0].text == "dog"
