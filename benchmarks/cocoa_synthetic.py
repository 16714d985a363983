"""CoCoA on a small learnable task: synthetic shapes/colours/positions with captions, tiny random-init VLM.

Arms (same random init, same data):
  contrastive-only : stage 3 for N steps
  cocoa            : stage 1 for N/4 + stage 2 for N/4 + stage 3 for N/2 steps (same number of steps)
  cocoa+N          : (--arms ... cocoa+N) the same pre-training, then stage 3 for N steps (more budget)
Reported: text->image and image->text recall@1 over the held-out renders (every combination once),
searched through embedkit's FAISS index code, and MMEB-style precision@1 (positive + 9 random candidates).

    python benchmarks/cocoa_synthetic.py --steps 160 --seeds 0 1    # writes benchmarks/cocoa_synthetic.{md,json}

Pre-training records (`--pretrain`): `pairs` (default) are image+caption records; stage 2 encodes the image
alone and reconstructs the caption through <EOS> (the caption is removed from the content, so it cannot be
copied); `separate` are the images and the captions as records of their own (the earlier runs' set-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from embedkit.cocoa.config import CocoaConfig  # noqa: E402
from embedkit.cocoa.data import ContrastivePair  # noqa: E402
from embedkit.cocoa.trainer import CocoaTrainer, loss_trend  # noqa: E402
from embedkit.data import Document  # noqa: E402
from embedkit.fidelity.metrics import effective_rank  # noqa: E402
from embedkit.index import Index, write_dense_index  # noqa: E402
from embedkit.io import atomic_write  # noqa: E402
from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig  # noqa: E402
from embedkit.multimodal.mmeb import evaluate_mmeb, load_mmeb  # noqa: E402
from embedkit.multimodal.sequence import MultimodalInput  # noqa: E402
from embedkit.multimodal.synthetic import make_scenes, save_scenes  # noqa: E402
from embedkit.multimodal.tiny import build_tiny_vlm  # noqa: E402

QUERY_INSTRUCTION = "Find an image that matches the caption."


def config(model: str, out: str, s1: int, s2: int, s3: int, seed: int, batch: int) -> CocoaConfig:
    return CocoaConfig.model_validate({
        "model": {"name_or_path": model, "max_length": 64},
        "stage1": {"steps": s1, "learning_rate": 1e-3},
        "stage2": {"steps": s2, "learning_rate": 1e-3},
        "stage3": {"steps": s3, "learning_rate": 5e-4, "hard_negatives": 0, "symmetric": True},
        "optim": {"batch_size": batch, "seed": seed, "warmup_steps": 10},
        "run": {"output_dir": out, "save_every": 10_000, "log_every": 20, "device": "cpu"},
    })


def recall_at_1(embedder, test, work: Path) -> dict[str, float]:
    """Text->image and image->text recall@1, searched through a Flat FAISS index."""
    captions = [scene.caption for scene in test]
    images = [MultimodalInput(image=scene.image) for scene in test]
    text_vectors = embedder.encode_queries(captions, instruction=QUERY_INSTRUCTION)
    image_vectors = embedder.encode_documents(images)
    spec = embedder.spec()
    result = {}
    for name, queries, docs in (("t2i_R@1", text_vectors, image_vectors), ("i2t_R@1", image_vectors, text_vectors)):
        documents = [Document(id=str(i), text=captions[i]) for i in range(len(test))]
        write_dense_index(work / name, docs, documents, spec, factory="Flat", overwrite=True)
        hits = Index.load(work / name).search_vectors(queries, k=1, with_text=False)
        # Several renders can share a caption only across splits, so each test key is unique here.
        result[name] = float(np.mean([test[int(h[0].id)].key == test[i].key for i, h in enumerate(hits)]))
    return result


def geometry(embedder, test) -> dict[str, float]:
    """Mean pairwise cosine and centred effective rank of the held-out images' and captions' embeddings."""
    out = {}
    for name, items, instruction in (
        ("images", [MultimodalInput(image=s.image) for s in test], None),
        ("captions", [s.caption for s in test], QUERY_INSTRUCTION),
    ):
        vectors = embedder.encode(items, instruction=instruction)
        cos = vectors @ vectors.T
        off = cos[~np.eye(len(vectors), dtype=bool)]
        out[f"{name} mean cos"] = float(off.mean())
        out[f"{name} eff. rank (centred)"] = effective_rank(vectors, center=True)
    return out


def write_mmeb(test, folder: Path, seed: int) -> None:
    """The test set in MMEB-eval form: caption query, positive image + 9 random other images."""
    names = save_scenes(test, folder / "images")
    rng = random.Random(seed)
    with atomic_write(folder / "tasks" / "SyntheticT2I.jsonl") as handle:
        for i, scene in enumerate(test):
            others = rng.sample([j for j in range(len(test)) if j != i], 9)
            row = {"qry_text": scene.caption, "qry_img_path": None, "tgt_text": [""] * 10,
                   "tgt_img_path": [names[i]] + [names[j] for j in others]}
            handle.write(json.dumps(row) + "\n")


def pretrain_records(train, kind: str = "pairs") -> list[MultimodalInput]:
    """Stage-1/2 records: image+caption pairs, or images and captions as separate records."""
    if kind == "pairs":
        return [MultimodalInput(text=s.caption, image=s.image) for s in train]
    return [MultimodalInput(image=s.image) for s in train] + [MultimodalInput(text=s.caption) for s in train]


def run(seed: int, steps: int, batch: int, size: int, work: Path, arms: list[str],
        pretrain_kind: str = "pairs") -> tuple[list[dict], list[dict]]:
    """Train and evaluate every arm for one seed: result rows and the embedding geometry per stage."""
    torch.manual_seed(seed)
    model = build_tiny_vlm(work / "init", "qwen2-vl", seed=seed, image_pixels=size * size)
    train = make_scenes(seed=1000 + seed, repeats=4, size=size)
    test = make_scenes(seed=2000 + seed, repeats=1, size=size)
    pretrain = pretrain_records(train, pretrain_kind)
    pairs = [ContrastivePair(MultimodalInput(text=s.caption, instruction=QUERY_INSTRUCTION),
                             MultimodalInput(image=s.image)) for s in train]
    write_mmeb(test, work / "mmeb", seed)
    tasks = load_mmeb(work / "mmeb" / "tasks", image_base_dir=work / "mmeb" / "images")
    rows = []
    stages: list[dict] = []  # embedding geometry per seed, arm and stage

    def measure(embedder, arm: str, stage: str) -> None:
        stages.append({"seed": seed, "arm": arm, "stage": stage, **geometry(embedder, test)})

    def evaluate(trainer, arm: str, started: float, extra: dict) -> None:
        embedder = trainer.embedder()
        metrics = recall_at_1(embedder, test, work / f"index-{arm}")
        mmeb = evaluate_mmeb(embedder, tasks, query_instructions={"SyntheticT2I": QUERY_INSTRUCTION})
        rows.append({"seed": seed, "arm": arm, **metrics, "mmeb_P@1": mmeb.average["precision@1"],
                     "train_s": round(time.time() - started, 1), **extra})
        measure(embedder, arm, "after stage 3")
        print(json.dumps(rows[-1]), flush=True)

    measure(MultimodalEmbedder(MultimodalEmbedderConfig(model=str(model), device="cpu")), "all", "random init")
    if "contrastive-only" in arms:
        started = time.time()
        baseline = CocoaTrainer(config(str(model), str(work / "base"), 0, 0, steps, seed, batch))
        baseline.contrastive(pairs, resume=False)
        first, last = loss_trend(baseline.history[-1])
        evaluate(baseline, "contrastive-only", started, {"stage3_loss": f"{first:.2f}->{last:.2f}"})
    cocoa_arms = [(arm, steps - 2 * (steps // 4) if arm == "cocoa" else steps) for arm in arms if arm.startswith("cocoa")]
    if not cocoa_arms:
        return rows, stages

    started = time.time()
    quarter = steps // 4
    # Stage 1 alone, then stage 2 resumed from its checkpoint (the same steps as one run of both), so the
    # geometry can be measured between them.
    stage1 = CocoaTrainer(config(str(model), str(work / "cocoa"), quarter, 0, 0, seed, batch))
    stage1.pretrain(pretrain, resume=False)
    measure(stage1.embedder(), "cocoa (pre-training)", f"after stage 1 ({quarter} steps)")
    pre = CocoaTrainer(config(str(model), str(work / "cocoa"), quarter, quarter, steps - 2 * quarter, seed, batch))
    pretrained = pre.pretrain(pretrain)
    measure(pre.embedder(), "cocoa (pre-training)", f"after stages 1+2 ({quarter}+{quarter} steps)")
    losses = {f"{r.stage}_loss": "{:.2f}->{:.2f}".format(*loss_trend(r)) for r in stage1.history + pre.history
              if r.losses}
    pre_seconds = time.time() - started
    for arm, stage3_steps in cocoa_arms:
        started = time.time()
        cfg = config(str(model), str(work / arm), quarter, quarter, stage3_steps, seed, batch)
        trainer = CocoaTrainer(cfg, init=pretrained)
        trainer.contrastive(pairs, resume=False)
        first, last = loss_trend(trainer.history[-1])
        evaluate(trainer, arm.replace("+N", f"+{steps}"), started - pre_seconds, {**losses, "stage3_loss": f"{first:.2f}->{last:.2f}"})
    return rows, stages


def mean_se(values: list[float]) -> str:
    """Mean ± standard error (std with ddof 1 over sqrt(n)); the mean alone for one value."""
    if len(values) < 2:
        return f"{np.mean(values):.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) / np.sqrt(len(values)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160, help="step budget N (default 160)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (16: 4 image tokens)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=["contrastive-only", "cocoa"],
                        choices=["contrastive-only", "cocoa", "cocoa+N"], help="which arms to run")
    parser.add_argument("--pretrain", choices=["pairs", "separate"], default="pairs",
                        help="stage-1/2 records: image+caption pairs (caption removed from the content in stage 2) "
                             "or images and captions separately")
    parser.add_argument("--out", default=str(ROOT / "cocoa_synthetic"))
    parser.add_argument("--note", help="markdown file appended to the table (e.g. what changed since the last run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    began = time.time()
    rows: list[dict] = []
    stages: list[dict] = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            seed_rows, seed_stages = run(seed, args.steps, args.batch, args.size, Path(tmp), args.arms, args.pretrain)
            rows += seed_rows
            stages += seed_stages
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = [
        "# CoCoA synthetic benchmark (tiny random-init Qwen2-VL, CPU)", "",
        f"Budget N={args.steps} optimizer steps, batch {args.batch}, seeds {args.seeds}, {args.size}x{args.size} images, "
        f"{len(make_scenes(repeats=1))} test renders (every shape x colour x position once), "
        f"train = 4 other renders of each. Wall time {time.time() - began:.0f} s on a shared 2-core CPU, "
        f"{args.threads} torch threads. No GPU was available: no throughput or memory numbers. "
        f"Pre-training records: {args.pretrain}; stage 2 decodes from a decoder-start token after <EOS>, stage 1 "
        "masks image patches before the vision encoder.", "",
        "| seed | arm | t2i R@1 | i2t R@1 | MMEB-style P@1 (10 cand.) | train s | losses (first->last) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        losses = ", ".join(f"{k[:-5]} {v}" for k, v in r.items() if k.endswith("_loss"))
        lines.append(f"| {r['seed']} | {r['arm']} | {r['t2i_R@1']:.3f} | {r['i2t_R@1']:.3f} | "
                     f"{r['mmeb_P@1']:.3f} | {r['train_s']} | {losses} |")
    lines += ["", f"Mean ± standard error over {len(args.seeds)} seed(s):", "",
              "| arm | t2i R@1 | i2t R@1 | P@1 |", "|---|---|---|---|"]
    for arm in arms:
        chosen = [r for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(mean_se([r[key] for r in chosen])
                                               for key in ("t2i_R@1", "i2t_R@1", "mmeb_P@1")) + " |")
    lines += ["", "Chance: R@1 = 1/48 = 0.021, P@1 = 0.100."]
    columns = [k for k in stages[0] if k not in ("seed", "arm", "stage")]
    lines += ["", "Geometry of the held-out embeddings (mean pairwise cosine; effective rank of the centred "
              "vectors), per seed and stage:", "",
              "| seed | arm | stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    lines += [f"| {g['seed']} | {g['arm']} | {g['stage']} | " + " | ".join(f"{g[c]:.3f}" for c in columns) + " |"
              for g in stages]
    if args.note:
        lines += ["", Path(args.note).read_text().rstrip()]
    with atomic_write(args.out + ".md") as handle:
        handle.write("\n".join(lines) + "\n")
    with atomic_write(args.out + ".json") as handle:
        json.dump({"args": vars(args), "rows": rows, "geometry": stages}, handle, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
