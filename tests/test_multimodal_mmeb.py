"""MMEB-style evaluation: the data format, precision@1 over each query's candidates, recall@k via an index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedkit.encoding.config import EncoderSpec
from embedkit.errors import DataFormatError
from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig
from embedkit.multimodal.mmeb import evaluate_mmeb, load_mmeb, read_mmeb_task
from embedkit.multimodal.synthetic import make_scenes, save_scenes
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)


class WordVectors:
    """A transparent embedder: one axis per known word, so every score is predictable by hand."""

    VOCAB = ["cat", "dog", "car", "tree"]

    def _vector(self, item) -> np.ndarray:
        words = f"{item.text or ''} {item.image or ''}".replace(".png", "").split()
        vector = np.array([float(w in words) for w in self.VOCAB], dtype=np.float32)
        return vector / max(np.linalg.norm(vector), 1e-9)

    def encode_queries(self, items, instruction=None):
        return np.stack([self._vector(item) for item in items])

    encode_documents = encode_queries

    def spec(self):
        return EncoderSpec(model="word-vectors", fingerprint="0", pooling="none", normalize=True, dim=4)


def write_task(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_reader_handles_placeholders_lists_and_base_dir(tmp_path):
    path = write_task(tmp_path / "T.jsonl", [
        {"qry_text": "<|image_1|>\nRepresent the given image.", "qry_img_path": "q/1.png",
         "tgt_text": ["a cat", "a dog"], "tgt_img_path": ["", ""]},
    ])
    [example] = read_mmeb_task(path, image_base_dir=tmp_path / "imgs")
    assert example.query.text == "Represent the given image."
    assert example.query.image == str(tmp_path / "imgs" / "q/1.png")
    assert [c.text for c in example.candidates] == ["a cat", "a dog"]
    assert all(c.image is None for c in example.candidates)


def test_reader_errors_name_file_and_line(tmp_path):
    bad = write_task(tmp_path / "Bad.jsonl", [{"qry_text": "x", "tgt_text": ["y"]}, {"qry_text": "x", "tgt_text": []}])
    with pytest.raises(DataFormatError, match="Bad.jsonl, line 2"):
        read_mmeb_task(bad)
    with pytest.raises(DataFormatError, match="line 1"):
        write_task(tmp_path / "Q.jsonl", [{"tgt_text": ["y"]}])
        read_mmeb_task(tmp_path / "Q.jsonl")


def test_precision_and_recall_are_computed_per_task_and_averaged(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    # Task A: query 1 ranks its positive first; query 2 does not (its positive is the wrong word).
    write_task(folder / "A.jsonl", [
        {"qry_text": "cat", "tgt_text": ["cat", "dog", "car"]},
        {"qry_text": "dog", "tgt_text": ["tree", "dog"]},
    ])
    # Task B: image candidates given by path; the single query is right.
    write_task(folder / "B.jsonl", [{"qry_text": "car", "tgt_img_path": ["car.png", "tree.png"]}])
    tasks = load_mmeb(folder)
    assert list(tasks) == ["A", "B"]
    report = evaluate_mmeb(WordVectors(), tasks, index_dir=tmp_path / "idx", k_values=(1, 2))
    assert report.per_task["A"]["precision@1"] == 0.5
    assert report.per_task["B"]["precision@1"] == 1.0
    assert report.average["precision@1"] == 0.75
    # Recall through the index over each task's candidate pool: "dog" finds "dog" (not its positive "tree").
    assert report.per_task["A"]["recall@1"] == 0.5
    assert report.per_task["B"]["recall@1"] == 1.0
    assert (tmp_path / "idx" / "A").is_dir()
    assert "| **average** |" in report.to_markdown()


def test_tiny_vlm_end_to_end_with_image_files(tmp_path):
    scenes = make_scenes(seed=0, size=16, shapes=("circle",), positions=("left",))
    names = save_scenes(scenes, tmp_path / "images")
    rows = [{"qry_text": s.caption, "tgt_img_path": [names[i]] + [n for j, n in enumerate(names) if j != i]}
            for i, s in enumerate(scenes)]
    write_task(tmp_path / "Shapes.jsonl", rows)
    tasks = load_mmeb(tmp_path / "Shapes.jsonl", image_base_dir=tmp_path / "images")
    embedder = MultimodalEmbedder(MultimodalEmbedderConfig(model=str(cached_tiny_vlm("qwen2-vl")), device="cpu"))
    report = evaluate_mmeb(embedder, tasks, index_dir=tmp_path / "idx", k_values=(1, 4))
    metrics = report.per_task["Shapes"]
    assert metrics["queries"] == 4
    assert 0.0 <= metrics["precision@1"] <= 1.0
    assert metrics["recall@4"] == 1.0  # four candidates in the pool: every positive is in the top 4


def test_mmeb_v1_task_table_is_the_published_one():
    from embedkit.multimodal.mmeb import MMEB_V1_TASKS

    assert len(MMEB_V1_TASKS) == 36
    splits = [split for _, split in MMEB_V1_TASKS.values()]
    assert splits.count("IND") == 20 and splits.count("OOD") == 16
    counts = {c: sum(cat == c for cat, _ in MMEB_V1_TASKS.values()) for c in ("classification", "vqa", "retrieval", "grounding")}
    assert counts == {"classification": 10, "vqa": 10, "retrieval": 12, "grounding": 4}
    # The in-distribution tasks are MMEB-train's 20 datasets.
    assert {t for t, (_, s) in MMEB_V1_TASKS.items() if s == "IND"} == {
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
        "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
        "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO"}


def test_mmeb_v1_aggregation_on_a_hand_made_table():
    from embedkit.multimodal.mmeb import MMEB_V1_TASKS, MmebReport, mmeb_v1_summary

    # Score = 0.1 for IND classification, 0.3 for OOD classification, 0.5 VQA, 0.8 retrieval,
    # 1.0 grounding, except RefCOCO = 0.0.
    table = {}
    for task, (category, split) in MMEB_V1_TASKS.items():
        table[task] = {"classification": 0.1 if split == "IND" else 0.3, "vqa": 0.5, "retrieval": 0.8,
                       "grounding": 1.0}[category]
    table["RefCOCO"] = 0.0
    summary = mmeb_v1_summary(table)
    assert summary["classification"] == pytest.approx(0.2)  # (5 * 0.1 + 5 * 0.3) / 10
    assert summary["vqa"] == pytest.approx(0.5) and summary["retrieval"] == pytest.approx(0.8)
    assert summary["grounding"] == pytest.approx(0.75)  # (1 + 0 + 1 + 1) / 4
    # IND: 5 cls (0.1) + 6 vqa (0.5) + 8 ret (0.8) + MSCOCO (1.0) = 10.9 over 20 tasks.
    assert summary["IND"] == pytest.approx(10.9 / 20)
    # OOD: 5 cls (0.3) + 4 vqa (0.5) + 4 ret (0.8) + RefCOCO 0 + 2 grounding (1.0) = 8.7 over 16.
    assert summary["OOD"] == pytest.approx(8.7 / 16)
    assert summary["overall"] == pytest.approx((10.9 + 8.7) / 36)
    # Tasks outside MMEB-V1 are ignored; incomplete columns are left out rather than averaged partially.
    partial = mmeb_v1_summary({k: v for k, v in table.items() if k != "GQA"} | {"MyTask": 9.0})
    assert "vqa" not in partial and "OOD" not in partial and "overall" not in partial
    assert partial["IND"] == pytest.approx(summary["IND"])
    report = MmebReport(per_task={"GQA": {"queries": 2.0, "precision@1": 0.5}}, average={"precision@1": 0.5},
                        summary={"precision@1": summary})
    text = report.to_markdown()
    assert "| GQA | vqa | OOD | 2 | 0.5000 |" in text and "| precision@1 |" in text


def test_hub_snapshot_layout_with_parquet_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for task, queries in (("N24News", ["cat", "dog"]), ("GQA", ["car"])):
        folder = tmp_path / task
        folder.mkdir()
        rows = [{"qry_text": f"<|image_1|> {q}", "qry_img_path": f"{task}/{q}.jpg", "tgt_text": [q, "tree"],
                 "tgt_img_path": ["", ""]} for q in queries]
        pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "test-00000-of-00002.parquet")
        pq.write_table(pa.Table.from_pylist(rows[1:] or rows[:1]), folder / "test-00001-of-00002.parquet")
    tasks = load_mmeb(tmp_path, image_base_dir=tmp_path / "eval_images")
    assert sorted(tasks) == ["GQA", "N24News"] and len(tasks["N24News"]) == 2
    example = tasks["N24News"][0]
    assert example.query.text == "cat" and example.query.image == str(tmp_path / "eval_images" / "N24News/cat.jpg")
    assert list(load_mmeb(tmp_path, tasks=["GQA"])) == ["GQA"]
    with pytest.raises(Exception, match="no data for tasks"):
        load_mmeb(tmp_path, tasks=["OVEN"])
