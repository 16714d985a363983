"""Stage 3's training mix: `data.contrastive` as a list of subsets (parquet, jsonl, a local `datasets` folder
read like the hub's MMEB-train parquet), each capped and weighted, read row by row; the shipped configs
(the published VLM2Vec setup and the old single-string form) load; training runs through the CLI."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.data import read_contrastive_pairs
from embedkit.cocoa.mix import ContrastiveMix
from embedkit.errors import DataFormatError
from embedkit.multimodal.synthetic import make_scenes, save_scenes
from embedkit.multimodal.tiny import cached_tiny_vlm
from tests.test_index_integrity import ROOT, assert_user_error, embedkit

torch.set_num_threads(2)
# VLM2Vec's MMEB-train subsets (its train config's subset_name list).
MMEB_TRAIN = ["ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
              "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
              "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO"]


def rows(prefix: str, count: int) -> list[dict]:
    return [{"qry": f"{prefix} query {i}", "qry_image_path": "", "pos_text": f"{prefix} positive {i}",
             "pos_image_path": "", "neg_text": f"{prefix} negative {i}", "neg_image_path": ""} for i in range(count)]


def write_parquet(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def test_subsets_are_capped_weighted_and_read_lazily(tmp_path):
    a = write_parquet(tmp_path / "A.parquet", rows("a", 5))
    b = write_parquet(tmp_path / "B.parquet", rows("b", 3))
    c = tmp_path / "C.jsonl"
    c.write_text("".join(json.dumps(r) + "\n\n" for r in rows("c", 4)))
    hub = write_parquet(tmp_path / "hubsnap" / "data" / "train-00000-of-00001.parquet", rows("h", 6)).parent.parent
    config = CocoaConfig.model_validate({"model": {"name_or_path": "m"}, "data": {"contrastive": [
        {"source": str(a), "cap": 2}, {"source": str(b), "weight": 2}, {"source": str(c), "cap": 3, "weight": 0.5},
        {"source": f"hf:{hub}", "cap": 4}]}})
    mix = read_contrastive_pairs(config.data.contrastive)
    assert isinstance(mix, ContrastiveMix)
    assert list(mix.composition().values()) == [2, 6, 2, 4] and len(mix) == 14
    texts = [mix[i].query.text for i in range(len(mix))]
    assert texts[:2] == ["a query 0", "a query 1"]  # the first `cap` rows, as VLM2Vec's split[:N]
    assert texts[2:8] == ["b query 0", "b query 1", "b query 2"] * 2  # weight 2: twice per pass
    assert texts[8:10] == ["c query 0", "c query 1"]  # cap 3, weight 0.5: round(1.5) = 2
    assert texts[10:] == [f"h query {i}" for i in range(4)]  # the `datasets` reader, sliced to the cap
    pair = mix[3]
    assert pair.positive.text == "b positive 1" and [n.text for n in pair.negatives] == ["b negative 1"]
    with pytest.raises(IndexError):
        mix[len(mix)]


def test_unreadable_subsets_and_rows_are_refused_with_file_and_line(tmp_path):
    wrong = write_parquet(tmp_path / "wrong.parquet", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataFormatError, match="wrong.parquet.*no query column"):
        read_contrastive_pairs([{"source": str(wrong)}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows("x", 1)[0]) + "\n" + json.dumps({"qry": "q", "pos_text": ""}) + "\n")
    mix = read_contrastive_pairs([{"source": str(bad)}])
    assert mix[0].query.text == "x query 0"
    with pytest.raises(DataFormatError, match="bad.jsonl, line 2.*no positive"):
        mix[1]


def test_shipped_configs_name_the_published_mix_and_old_configs_still_load():
    published = CocoaConfig.from_yaml(ROOT / "configs" / "cocoa.yaml")
    subsets = published.data.contrastive
    assert [s.source for s in subsets] == [f"hf:TIGER-Lab/MMEB-train/{name}:original" for name in MMEB_TRAIN]
    assert {s.cap for s in subsets} == {50000} and {s.weight for s in subsets} == {1.0}
    assert published.model.name_or_path == "Qwen/Qwen2-VL-2B-Instruct" and published.model.lora is not None
    assert published.model.dtype == "bfloat16" and published.stage3.grad_cache
    assert published.optim.batch_size * published.optim.gradient_accumulation == 1024
    assert CocoaConfig.from_yaml(ROOT / "configs" / "cocoa_tiny.yaml").data.contrastive == \
        "runs/cocoa-tiny-data/pairs.jsonl"


@pytest.mark.slow
def test_contrastive_command_trains_on_a_mix_of_subsets(tmp_path):
    scenes = make_scenes(seed=0, size=16, shapes=("square",), positions=("left",))
    names = save_scenes(scenes, tmp_path / "images")
    image_rows = [{"qry": s.caption, "pos_image_path": n, "neg_image_path": names[i - 1]}
                  for i, (s, n) in enumerate(zip(scenes, names, strict=True))]
    write_parquet(tmp_path / "Scenes.parquet", image_rows)
    write_parquet(tmp_path / "Text.parquet", rows("t", 6))
    config = {"model": {"name_or_path": str(cached_tiny_vlm("qwen2-vl")), "max_length": 32},
              "data": {"contrastive": [{"source": str(tmp_path / "Scenes.parquet"), "weight": 2},
                                       {"source": str(tmp_path / "Text.parquet"), "cap": 3}],
                       "image_base_dir": str(tmp_path / "images")},
              "stage3": {"steps": 3}, "optim": {"batch_size": 4},
              "run": {"output_dir": str(tmp_path / "run"), "device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = embedkit("cocoa", "contrastive", "--config", tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr
    assert "stage3: 3 steps" in result.stdout
    assert (tmp_path / "run" / "contrastive" / "model" / "config.json").exists()

    config["data"]["contrastive"].append({"source": str(tmp_path / "missing.parquet")})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(embedkit("cocoa", "contrastive", "--config", tmp_path / "c.yaml"), "missing.parquet")


def test_pretrain_reads_several_sources_and_mmeb_train_rows_from_the_command_line(tmp_path):
    """`data.pretrain` as a list: a jsonl in the documented format and MMEB-train parquet rows (through the
    `datasets` reader of a local folder, as the hub's parquet is read), one input per side of each row."""
    (tmp_path / "pre.jsonl").write_text(json.dumps({"text": "Alice hit Bob"}) + "\n")
    hub = write_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet", rows("m", 2)).parent.parent
    from embedkit.cocoa.data import read_pretrain_records

    records = read_pretrain_records([str(tmp_path / "pre.jsonl"), f"hf:{hub}"])
    assert [r.text for r in records] == ["Alice hit Bob", "m query 0", "m positive 0", "m query 1", "m positive 1"]
    config = {"model": {"name_or_path": str(tmp_path / "no-model")},
              "data": {"pretrain": [str(tmp_path / "pre.jsonl"), str(tmp_path / "bad.jsonl")]},
              "run": {"output_dir": str(tmp_path / "run"), "device": "cpu"}}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"title": "no text"}) + "\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(embedkit("cocoa", "pretrain", "--config", tmp_path / "c.yaml"), "bad.jsonl", "line 1")


def test_a_subset_the_weights_would_empty_and_bad_lines_are_reported_exactly(tmp_path):
    small = write_parquet(tmp_path / "small.parquet", rows("s", 3))
    with pytest.raises(DataFormatError, match="small.parquet.*weight 0.1 leaves none"):
        read_contrastive_pairs([{"source": str(small), "weight": 0.1}])
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text("\n" + json.dumps(rows("x", 1)[0]) + "\n\n{broken\n")
    mix = read_contrastive_pairs([{"source": str(spaced)}])
    with pytest.raises(DataFormatError, match="spaced.jsonl, line 4"):
        mix[1]
