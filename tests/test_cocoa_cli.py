"""`embedkit cocoa …` end to end on a tiny model: show-mask, pretrain, contrastive (resume-aware), mmeb."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from embedkit.cli import main
from embedkit.multimodal.synthetic import make_scenes, save_scenes
from embedkit.multimodal.tiny import cached_tiny_vlm

torch.set_num_threads(2)


def test_show_mask_prints_and_plots(tmp_path, capsys):
    assert main(["cocoa", "show-mask", "--stage", "2", "--text", "Alice hit Bob", "--pad-to", "10",
                 "--padding", "right", "--plot", str(tmp_path / "m.png")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "|" in line and line[:4].strip().isdigit()]
    assert len(rows) == 10
    # Alice hit Bob <EOS> | Alice hit Bob <EOS> | pad pad : the first target row sees only <EOS> and itself.
    assert rows[3].endswith("|####......")  # <EOS>
    assert rows[4].endswith("|...##.....")  # first target token
    assert rows[9].endswith("|.........#")  # padding
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_show_mask_needs_an_input():
    assert main(["cocoa", "show-mask", "--stage", "1"]) == 2


@pytest.mark.slow
def test_pretrain_contrastive_and_mmeb_from_the_command_line(tmp_path, capsys):
    scenes = make_scenes(seed=0, size=16, shapes=("square",), positions=("left",))
    names = save_scenes(scenes, tmp_path / "images")
    (tmp_path / "pre.jsonl").write_text("".join(
        json.dumps({"text": s.caption, "image": n}) + "\n" for s, n in zip(scenes, names, strict=True)))
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"qry": s.caption, "pos_image_path": n, "neg_image_path": names[i - 1]}) + "\n"
        for i, (s, n) in enumerate(zip(scenes, names, strict=True))))
    config = {"model": {"name_or_path": str(cached_tiny_vlm("qwen2-vl")), "max_length": 32},
              "data": {"pretrain": str(tmp_path / "pre.jsonl"), "contrastive": str(tmp_path / "pairs.jsonl"),
                       "image_base_dir": str(tmp_path / "images")},
              "stage1": {"steps": 2}, "stage2": {"steps": 2}, "stage3": {"steps": 2},
              "optim": {"batch_size": 4}, "run": {"output_dir": str(tmp_path / "run"), "device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    assert main(["cocoa", "pretrain", "--config", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "run" / "pretrain" / "model" / "config.json").exists()
    assert main(["cocoa", "pretrain", "--config", str(tmp_path / "c.yaml")]) == 0  # resumes: nothing left
    assert "nothing to do" in capsys.readouterr().out
    assert main(["cocoa", "contrastive", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"starting from: {tmp_path / 'run' / 'pretrain' / 'model'}" in out and "stage3: 2 steps" in out

    rows = [{"qry_text": s.caption, "tgt_img_path": [names[i]] + [n for j, n in enumerate(names) if j != i]}
            for i, s in enumerate(scenes)]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "Squares.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["cocoa", "mmeb", "--model", str(tmp_path / "run" / "contrastive" / "model"), "--data",
                 str(tmp_path / "tasks"), "--image-dir", str(tmp_path / "images"), "--device", "cpu",
                 "--index-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["per_task"]["Squares"]["queries"] == 4 and "recall@10" in report["average"]

    # An image corpus by file path into an embedkit index, then searched by image: the same image ranks first.
    (tmp_path / "images" / "corpus.jsonl").write_text("".join(
        json.dumps({"id": f"img{i}", "image": n}) + "\n" for i, n in enumerate(names)))
    model = str(tmp_path / "run" / "contrastive" / "model")
    capsys.readouterr()
    assert main(["cocoa", "index", "--model", model, "--corpus", str(tmp_path / "images" / "corpus.jsonl"),
                 "--out", str(tmp_path / "photos"), "--device", "cpu"]) == 0
    assert main(["cocoa", "search", str(tmp_path / "photos"), "--model", model, "--device", "cpu",
                 "--image", str(tmp_path / "images" / names[2]), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].split("\t")[:3:2] == ["1", "img2"] and names[2] in lines[-2]
    assert main(["cocoa", "search", str(tmp_path / "photos"), "--model", str(cached_tiny_vlm("qwen2-vl")),
                 "--device", "cpu", "--text", "a red square"]) == 2  # other weights: refused


def test_config_problems_exit_2(tmp_path, capsys):
    assert main(["cocoa", "pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "x"}}))
    assert main(["cocoa", "pretrain", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "data.pretrain" in capsys.readouterr().err


def test_tiny_model_command(tmp_path):
    assert main(["cocoa", "tiny-model", "--out", str(tmp_path / "m"), "--family", "qwen2.5-vl"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
