"""Reward-model benchmark: accuracy, flip rate and position-bias gap of each judge on labelled pairs.

No preference benchmark ships offline, so the pairs are built with known winners (`embedkit rewards
build-pairs`): HotpotQA dev500 / NQ-open / Bamboogle questions with their gold answer vs another question's
answer, and verified right vs wrong Countdown equations and arithmetic solutions. No pretrained LM is
reachable either, so the judge is a TINY random-init Qwen2 (≈100k parameters, a BPE tokenizer trained on the
prompts). The benchmark:

1. splits the pairs into train and held-out (stratified by source);
2. evaluates every judge (pairwise, consistrm, acgenrm, reflectrm) with the untrained tiny model on the
   held-out pairs (both orders);
3. trains the tiny judge with the RL module on the train pairs, once per recipe: ConsistRM (self-supervised,
   configs/rm_consistrm.yaml, labels never read) and ReflectRM (supervised response + analysis preference,
   configs/rm_reflectrm.yaml), each after a short format-only warm-up (random letters);
4. evaluates the judges again with each trained model, and writes benchmarks/reward_models.{json,md}.

    nice -n 19 .venv/bin/python benchmarks/reward_models.py                      # defaults: ≈10-15 min on 2 cores
    .venv/bin/python benchmarks/reward_models.py --per-source 10 --steps 4 --out /tmp/rm   # smoke run

What a tiny model can show is the harness and the training loop working end to end, and how format and
position bias move with training; it cannot show the judging quality a real 4B-8B judge reaches.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JUDGES = ("pairwise", "consistrm", "acgenrm", "reflectrm")


def evaluate_all(model_path: Path, pairs, *, max_new_tokens: int, n_analyses: int) -> dict:
    from agents.llm import build_backend
    from agents.rewards.evaluate import evaluate_pairs
    from agents.rewards.judges import build_judge

    backend = build_backend({"kind": "transformers", "model": str(model_path), "batch_size": 16})
    out = {}
    for name in JUDGES:
        options: dict = {"max_new_tokens": max_new_tokens}
        if name == "reflectrm":
            options.update(n_analyses=n_analyses, reflect_max_new_tokens=8)
        started = time.perf_counter()
        report = evaluate_pairs(pairs, build_judge(name, backend, **options), judge_name=name, batch_size=32)
        out[name] = {**report.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
        o = report.overall
        print(f"  {name:10s} acc={o['accuracy']:.3f} gap={o['position_bias_gap']:+.3f} "
              f"flip={o['flip_rate'] if o['flip_rate'] is not None else float('nan'):.3f} "
              f"ties={o['ties']} invalid={o['invalid']}", flush=True)  # fmt: skip
    return out


def train_judge(recipe: str, model_path: Path, prompts: Path, out_dir: Path, args: argparse.Namespace) -> tuple[Path, list[dict]]:
    from agents.rewards.training import GRMTrainer
    from agents.rl.config import RLConfig

    overrides = {
        "policy.model": str(model_path), "task.params.path": str(prompts), "trainer.output_dir": str(out_dir),
        "trainer.steps": args.steps, "trainer.prompts_per_step": args.prompts_per_step, "trainer.lr": args.lr,
        "trainer.save_every": 0, "trainer.progress": False, "trainer.resume": False, "trainer.num_threads": 2,
        "rollout.group_size": args.group_size, "rollout.settings.max_new_tokens": args.max_new_tokens,
        "warmup.steps": args.warmup_steps, "warmup.lr": 5e-3, "warmup.batch_size": 16,
    }  # fmt: skip
    if recipe == "consistrm":
        overrides["reward.params.model"] = "sentence-transformers/all-MiniLM-L6-v2"
    config = RLConfig.from_yaml(ROOT / "configs" / f"rm_{recipe}.yaml", overrides=overrides)
    history = GRMTrainer(config).train()
    return out_dir / "checkpoints" / f"step-{args.steps}" / "policy", history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-source", type=int, default=30, help="pairs per source (5 sources)")
    parser.add_argument("--held-out", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=30, help="RL steps per recipe")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-analyses", type=int, default=4)
    parser.add_argument("--recipes", default="consistrm,reflectrm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/bench-reward-models", help="scratch folder (models, prompts)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "reward_models"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    import torch

    from agents.llm import build_backend
    from agents.rewards.pair_data import build_pairs, split_pairs
    from agents.rewards.pairs import write_pairs
    from agents.rewards.reflectrm import reflectrm_records
    from agents.rewards.tiny import build_tiny_judge
    from agents.rewards.training import consistrm_records, write_records_jsonl

    torch.set_num_threads(2)
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = build_pairs(per_source=args.per_source, seed=args.seed)
    train, held_out = split_pairs(pairs, args.held_out, args.seed)
    write_pairs(work / "pairs.train.jsonl", train)
    write_pairs(work / "pairs.heldout.jsonl", held_out)
    print(f"{len(pairs)} pairs: {len(train)} train, {len(held_out)} held out", flush=True)

    consist = consistrm_records(train, demonstrations=True, seed=args.seed)
    texts = [r["prompt"] for r in consist] + ["<criteria>correct answer</criteria> <choice>1</choice>"]
    base = build_tiny_judge(work / "tiny-judge", texts, seed=args.seed)
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())

    results: dict = {"pairs": {"total": len(pairs), "train": len(train), "held_out": len(held_out),
                               "per_source": args.per_source},
                     "model": {"kind": "random-init Qwen2 (tiny)", "parameters": n_params},
                     "settings": vars(args), "machine": platform.platform(), "before": {}, "after": {}, "training": {}}  # fmt: skip
    print("before training (untrained tiny judge):", flush=True)
    results["before"] = evaluate_all(base, held_out, max_new_tokens=args.max_new_tokens, n_analyses=args.n_analyses)

    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        if recipe == "consistrm":
            prompts = write_records_jsonl(work / "consistrm_prompts.jsonl", consist)
        elif recipe == "reflectrm":
            sampler = build_backend({"kind": "transformers", "model": str(base), "batch_size": 16})
            records = reflectrm_records(train, sampler, n_analyses=args.n_analyses, max_new_tokens=args.max_new_tokens,
                                        seed=args.seed, demonstrations=True)  # fmt: skip
            prompts = write_records_jsonl(work / "reflectrm_prompts.jsonl", records)
            results["training"]["reflectrm_tasks"] = {t: sum(r["answer"]["task"] == t for r in records)
                                                      for t in ("response", "analysis")}  # fmt: skip
        else:
            raise SystemExit(f"unknown recipe {recipe}")
        print(f"training ({recipe}) ...", flush=True)
        t0 = time.perf_counter()
        policy, history = train_judge(recipe, base, prompts, work / f"train-{recipe}", args)
        results["training"][recipe] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "reward_mean_first5": sum(m["reward_mean"] for m in history[:5]) / max(1, len(history[:5])),
            "reward_mean_last5": sum(m["reward_mean"] for m in history[-5:]) / max(1, len(history[-5:])),
            "label_agreement_last5": (sum(m.get("metric/reflectrm_response", 0.0) for m in history[-5:])
                                      / max(1, len(history[-5:]))) if recipe == "consistrm" else None,
        }  # fmt: skip
        print(f"after training ({recipe}):", flush=True)
        results["after"][recipe] = evaluate_all(policy, held_out, max_new_tokens=args.max_new_tokens,
                                                n_analyses=args.n_analyses)  # fmt: skip
    results["seconds"] = round(time.perf_counter() - started, 1)

    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render_markdown(results), encoding="utf-8")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.md')}")


def _row(label: str, judge: str, s: dict) -> str:
    def f(x, signed=False):
        return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")

    return (f"| {label} | {judge} | {f(s['accuracy'])} | {f(s['acc_chosen_first'])} | {f(s['acc_chosen_second'])} | "
            f"{f(s['position_bias_gap'], True)} | {f(s['flip_rate'])} | {s['ties']} | {s['invalid']} | {s['judgements']} |")  # fmt: skip


def render_markdown(results: dict) -> str:
    p, m = results["pairs"], results["model"]
    lines = [
        "# Reward-model benchmark (tiny judge)",
        "",
        f"**The judge here is a tiny random-init Qwen2 ({m['parameters']:,} parameters) trained for a few minutes on CPU.**",
        "These numbers show the evaluation harness and the RL training recipes running end to end, and how",
        "format errors and position bias move with training. They say nothing about the accuracy a real",
        "judge (the papers use 4B-8B models) reaches on RewardBench or RM-Bench.",
        "",
        f"Pairs: {p['total']} labelled pairs with known winners ({p['per_source']} per source: HotpotQA dev500, NQ-open,",
        "Bamboogle — gold answer vs another question's answer; Countdown and arithmetic — verified right vs wrong",
        f"solution), split {p['train']} train / {p['held_out']} held out. Every held-out pair is judged in both orders.",
        "Accuracy counts ties and unreadable verdicts as not correct (they are listed separately).",
        "",
        "Reproduce: `nice -n 19 .venv/bin/python benchmarks/reward_models.py` (settings in reward_models.json).",
        f"Machine: {results['machine']}, shared with other jobs; wall time {results['seconds']:.0f} s.",
        "",
        "## Held-out pairs, before and after RL training",
        "",
        "| model | judge | accuracy | acc (chosen 1st) | acc (chosen 2nd) | bias gap | flip rate | ties | invalid | judgements |",
        "|" + " --- |" * 10,
    ]
    for judge, report in results["before"].items():
        lines.append(_row("untrained", judge, report["overall"]))
    for recipe, reports in results["after"].items():
        for judge, report in reports.items():
            lines.append(_row(f"after {recipe} RL", judge, report["overall"]))
    lines += ["", "## Per source (held out)", "",
              "| model | judge | source | accuracy | bias gap | flip rate | invalid |", "|" + " --- |" * 7]  # fmt: skip
    for label, reports in [("untrained", results["before"])] + [(f"after {r}", v) for r, v in results["after"].items()]:
        for judge, report in reports.items():
            for source, s in report["subsets"].items():
                acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
                gap = "n/a" if s["position_bias_gap"] is None else f"{s['position_bias_gap']:+.3f}"
                flip = "n/a" if s["flip_rate"] is None else f"{s['flip_rate']:.3f}"
                lines.append(f"| {label} | {judge} | {source} | {acc} | {gap} | {flip} | {s['invalid']} |")
    lines += ["", "## Training", ""]
    for recipe, t in results["training"].items():
        lines.append(f"- `{recipe}`: {json.dumps(t)}")
    lines += ["", "## Reading", "", "(filled in after the run)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
