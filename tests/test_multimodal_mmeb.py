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
