"""CoCoA end to end on CPU: tiny random-init Qwen2-VL, synthetic captioned shapes, all three stages,
MMEB-style evaluation, an index search and the fidelity probes.

    python examples/cocoa_quickstart.py              # everything (a few minutes on a laptop)
    python examples/cocoa_quickstart.py --data-only  # only the model and data configs/cocoa_tiny.yaml reads
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from embedkit.multimodal.synthetic import make_scenes, save_scenes
from embedkit.multimodal.tiny import build_tiny_vlm

INSTRUCTION = "Find an image that matches the caption."


def write_data(folder: Path) -> None:
    train, test = make_scenes(seed=1, repeats=2, size=16), make_scenes(seed=2, repeats=1, size=16)
    names = save_scenes(train, folder / "images")
    test_names = save_scenes(test, folder / "images" / "test")
    with open(folder / "pretrain.jsonl", "w") as handle:
        for scene, name in zip(train, names, strict=True):
            handle.write(json.dumps({"image": name}) + "\n")
            handle.write(json.dumps({"text": scene.caption}) + "\n")
    with open(folder / "pairs.jsonl", "w") as handle:
        for i, (scene, name) in enumerate(zip(train, names, strict=True)):
            negative = next(n for j, n in enumerate(names) if train[j].key != scene.key and j > i % 7)
            handle.write(json.dumps({"qry": f"{INSTRUCTION} {scene.caption}", "pos_image_path": name,
                                     "neg_image_path": negative}) + "\n")
    rng = random.Random(0)
    (folder / "mmeb").mkdir(exist_ok=True)
    with open(folder / "mmeb" / "SyntheticT2I.jsonl", "w") as handle:
        for i, scene in enumerate(test):
            others = rng.sample([j for j in range(len(test)) if j != i], 9)
            handle.write(json.dumps({"qry_text": f"{INSTRUCTION} {scene.caption}",
                                     "tgt_img_path": [f"test/{test_names[i]}"] + [f"test/{test_names[j]}" for j in others]})
                         + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-only", action="store_true")
    args = parser.parse_args()
    build_tiny_vlm("models/tiny-qwen2vl", "qwen2-vl")
    data = Path("runs/cocoa-tiny-data")
    data.mkdir(parents=True, exist_ok=True)
    write_data(data)
    print(f"model: models/tiny-qwen2vl, data: {data}")
    if args.data_only:
        return
    # A CPU run: qwen-vl-utils needs torchvision, so images are read with PIL and the same resize rule unless
    # the environment says otherwise (embedkit/multimodal/images.py).
    os.environ.setdefault("EMBEDKIT_IMAGE_READER", "pil")
    embedkit = [sys.executable, "-m", "embedkit"]
    steps = [
        ["cocoa", "pretrain", "--config", "configs/cocoa_tiny.yaml"],
        ["cocoa", "contrastive", "--config", "configs/cocoa_tiny.yaml"],
        ["cocoa", "mmeb", "--model", "runs/cocoa-tiny/contrastive/model", "--data", str(data / "mmeb"),
         "--image-dir", str(data / "images"), "--index-dir", "runs/cocoa-tiny/mmeb-index"],
        ["fidelity", "--model", "runs/cocoa-tiny/pretrain/model", "--max-new-tokens", "12"],
    ]
    for step in steps:
        print("$ embedkit " + " ".join(step), flush=True)
        subprocess.run(embedkit + step, check=True)


if __name__ == "__main__":
    main()
