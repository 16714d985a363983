"""Why does stage 3 start badly after CoCoA pre-training on the synthetic task? Measure the geometry of the
<EOS> embeddings (mean pairwise cosine, effective rank) of the held-out images and captions for the random
init and after the benchmark's pre-training (same seed, data and steps as benchmarks/cocoa_synthetic.py).

    python benchmarks/cocoa_collapse_check.py --steps 120     # writes benchmarks/cocoa_collapse_check.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.cocoa_synthetic import config, geometry, pretrain_records  # noqa: E402
from embedkit.cocoa.trainer import CocoaTrainer  # noqa: E402
from embedkit.io import atomic_write  # noqa: E402
from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig  # noqa: E402
from embedkit.multimodal.synthetic import make_scenes  # noqa: E402
from embedkit.multimodal.tiny import build_tiny_vlm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--pretrain", choices=["pairs", "separate"], default="pairs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.time()
    size = args.size
    rows: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        rows.update({f"seed {seed}: {name}": values for name, values in run(seed, size, args).items()})
    columns = list(next(iter(rows.values())))
    lines = ["# Geometry of <EOS> embeddings before stage 3 (synthetic benchmark set-up)", "",
             f"Seeds {args.seeds}, {size}x{size} images, 48 held-out renders; wall time {time.time() - began:.0f} s "
             f"on a shared 2-core CPU. Pre-training records: {args.pretrain}. Stage 2 decodes from a decoder-start token after <EOS>; stage 1 masks "
             "image patches before the vision encoder.", "",
             "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{values[c]:.3f}" for c in columns) + " |" for name, values in rows.items()]
    with atomic_write(ROOT / "cocoa_collapse_check.md") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(seed: int, size: int, args) -> dict[str, dict[str, float]]:
    """Geometry at random init, after stage 1 and after stages 1+2, for one seed."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        model = build_tiny_vlm(Path(tmp) / "init", "qwen2-vl", seed=seed, image_pixels=size * size)
        train = make_scenes(seed=1000 + seed, repeats=4, size=size)
        test = make_scenes(seed=2000 + seed, repeats=1, size=size)
        pretrain = pretrain_records(train, args.pretrain)
        rows = {"random init": geometry(MultimodalEmbedder(MultimodalEmbedderConfig(model=str(model), device="cpu")), test)}
        quarter = args.steps // 4
        trainer = CocoaTrainer(config(str(model), str(Path(tmp) / "run"), quarter, 0, 0, seed, args.batch))
        trainer.pretrain(pretrain, resume=False)
        rows[f"after stage 1 ({quarter} steps)"] = geometry(trainer.embedder(), test)
        trainer = CocoaTrainer(config(str(model), str(Path(tmp) / "run"), quarter, quarter, 0, seed, args.batch))
        trainer.pretrain(pretrain)  # resumes after stage 1
        rows[f"after stages 1+2 ({quarter}+{quarter} steps)"] = geometry(trainer.embedder(), test)
    return rows


if __name__ == "__main__":
    main()
