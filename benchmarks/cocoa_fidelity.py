"""Compression-fidelity probes on a tiny CoCoA model, as it goes through pre-training.

The training texts carry strong priors ("the red strawberry", "Paris is the capital of France", Alice
usually hits Bob); the probe texts (embedkit.fidelity.PLANTED_TEXTS) plant facts against them ("the white
strawberry", "Paris is the capital of Germany", "Bob hit Alice"). The probes run on the random init, after
stage 1, and after half and all of stage 2, and show whether the <EOS> bottleneck keeps the planted facts
or rewrites them from the priors.

    python benchmarks/cocoa_fidelity.py            # writes benchmarks/cocoa_fidelity.{md,json}
    python benchmarks/cocoa_fidelity.py --hidden 32 64 128 --out benchmarks/cocoa_fidelity_sizes

With several `--hidden` widths the same schedule runs on a compressor of each width (the size side of the
size-fidelity paradox: does a wider <EOS> keep planted facts better, or only fit the priors better?).
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

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from embedkit.cocoa.config import CocoaConfig  # noqa: E402
from embedkit.cocoa.trainer import CocoaTrainer  # noqa: E402
from embedkit.fidelity import PLANTED_TEXTS, EosCompressor, run_probes  # noqa: E402
from embedkit.io import atomic_write  # noqa: E402
from embedkit.multimodal.sequence import MultimodalInput  # noqa: E402
from embedkit.multimodal.tiny import build_tiny_vlm  # noqa: E402

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
VERBS = ["hit", "paid", "chased", "taught", "called", "helped"]


def training_texts(count: int, seed: int) -> list[str]:
    """Template texts with priors: agents are mostly the earlier name of a pair, fruit have usual colours."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.4:
            a, b = sorted(rng.sample(NAMES, 2), key=NAMES.index)
            if rng.random() < 0.15:  # the prior: the earlier name is the agent 85% of the time
                a, b = b, a
            verb = rng.choice(VERBS)
            tail = rng.choice(["", f" {rng.randint(1, 99)} dollars", f" in {rng.randint(1990, 2024)}"])
            texts.append(f"{a} {verb} {b}{tail} .")
        elif kind < 0.7:
            thing, colour = rng.choice([("strawberry", "red"), ("banana", "yellow"), ("sun", "yellow"),
                                        ("grass", "green"), ("sky", "blue")])
            texts.append(rng.choice([f"the {colour} {thing} is small .", f"the {colour} {thing} weighs "
                                     f"{rng.randint(5, 500)} grams .", f"the {colour} {thing} rose at {rng.randint(1, 12)} ."]))
        else:
            city, country = rng.choice([("Paris", "France"), ("Berlin", "Germany"), ("Rome", "Italy"),
                                        ("Madrid", "Spain")])
            texts.append(rng.choice([f"{city} is the capital of {country} .", f"{city} is in {country} ."]))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", type=int, default=30)
    parser.add_argument("--stage2", type=int, default=120)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64], help="compressor widths (one run each)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "cocoa_fidelity"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--note", help="markdown file appended to the table (e.g. what changed since the last run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    began = time.time()
    records = [MultimodalInput(text=t) for t in training_texts(args.texts, args.seed)]
    extra = "\n".join(t.text for t in records[:200])
    results = []
    sizes = []
    for hidden in args.hidden:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_tiny_vlm(Path(tmp) / "init", "qwen2-vl", seed=args.seed, hidden_size=hidden, extra_text=extra)
            prefix = f"h{hidden}: " if len(args.hidden) > 1 else ""

            def probe(label: str, path: Path, prefix: str = prefix, hidden: int = hidden) -> None:
                report = run_probes(EosCompressor.from_path(str(path), device="cpu"), PLANTED_TEXTS,
                                    model_name=prefix + label)
                results.append(report)
                sizes.append(hidden)
                print(json.dumps({k: v for k, v in report.model_dump().items() if k != "rows"}), flush=True)

            probe("random init", model)
            half = args.stage2 // 2
            for label, s2 in (("after stage 1", 0), (f"stage 1 + {half} stage-2 steps", half),
                              (f"stage 1 + {args.stage2} stage-2 steps", args.stage2)):
                # Each checkpoint resumes from the previous one; the schedule must not depend on the length.
                config = CocoaConfig.model_validate({
                    "model": {"name_or_path": str(model), "max_length": 48},
                    "stage1": {"steps": args.stage1, "learning_rate": 1e-3},
                    "stage2": {"steps": s2, "learning_rate": 1e-3},
                    "optim": {"batch_size": args.batch, "seed": args.seed, "warmup_steps": 10,
                              "lr_schedule": "constant"},
                    "run": {"output_dir": str(Path(tmp) / "run"), "save_every": 10_000, "log_every": 20,
                            "device": "cpu"},
                })
                probe(label, CocoaTrainer(config).pretrain(records))

    fields = ["bleu", "exact_token_recovery", "reconstruction_nll", "entity_preservation", "number_preservation",
              "roles", "swap_cosine", "effective_rank", "effective_rank_centered", "mean_decoding_entropy"]
    lines = ["# CoCoA compression-fidelity probes (tiny random-init Qwen2-VL, CPU)", "",
             f"Tiny Qwen2-VL (hidden {', '.join(map(str, args.hidden))}, 2 layers), text-only pre-training on "
             f"{args.texts} template texts "
             f"with priors; stage 1 {args.stage1} steps, stage 2 up to {args.stage2} steps, batch {args.batch}. "
             f"Probes: the {len(PLANTED_TEXTS)} handmade planted-fact texts of `embedkit.fidelity.PLANTED_TEXTS` "
             f"(greedy decoding from <EOS>). Wall time {time.time() - began:.0f} s on a shared 2-core CPU. "
             "No GPU was available. Stage 2 decodes from a decoder-start token after <EOS> (the <EOS> state is "
             "read only through attention).", "",
             "| checkpoint | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
    for report in results:
        values = []
        for name in fields:
            value = getattr(report, name)
            values.append(f"{value:.3f}" if isinstance(value, float) else
                          (" ".join(f"{k}:{v}" for k, v in value.items()) if isinstance(value, dict) else str(value)))
        lines.append(f"| {report.model} | " + " | ".join(values) + " |")
    final = results[-1]
    lines += ["", f"Reconstructions by the last checkpoint ({final.model}):", "",
              "| planted text | reconstruction from <EOS> | role outcome |", "|---|---|---|"]
    lines += [f"| {row['text']} | {row['reconstruction'] or '(empty)'} | {row['role'] or ''} |" for row in final.rows]
    if args.note:
        lines += ["", Path(args.note).read_text().rstrip()]
    with atomic_write(args.out + ".md") as handle:
        handle.write("\n".join(lines) + "\n")
    with atomic_write(args.out + ".json") as handle:
        json.dump({"args": vars(args), "reports": [{**r.model_dump(), "hidden": h} for r, h in zip(results, sizes,
                                                                                                strict=True)]},
                  handle, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
