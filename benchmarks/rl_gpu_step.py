"""One GRPO step with micro-batching and bf16 on a random-init Qwen2 model of about 0.5B parameters (the
Qwen2.5-0.5B shape), recording peak GPU memory and step time. Needs a GPU; `--tiny` runs a small shape on CPU
to check the script.

    python benchmarks/rl_gpu_step.py                      # writes benchmarks/rl_gpu_step_results.md
    python benchmarks/rl_gpu_step.py --tiny --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.rl.config import RLConfig
    from agents.rl.toy import build_char_tokenizer
    from agents.rl.trainer import RLTrainer, estimate_memory
    from embedkit.io import atomic_write

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small shape (CPU check of the script)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "rl_gpu_step_results.md")
    args = parser.parse_args()
    shape = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True)  # fmt: skip
    if args.tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=4096)  # fmt: skip
    tok = build_char_tokenizer()  # token ids stay below the char vocabulary; the model has Qwen2's
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id)).to(torch.bfloat16)  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        config = RLConfig.from_dict({
            "task": {"name": "digit_map", "params": {"domains": ["next"]}},
            "policy": {"model": "qwen2-random", "dtype": "bfloat16", "gradient_checkpointing": True},
            "rollout": {"group_size": 8, "settings": {"max_new_tokens": args.max_new_tokens, "answer_close": None}},
            "algorithm": {"estimator": "grpo", "kl_coef": 0.001},
            "reward": {"name": "format", "params": {"pattern": "[0-9]"}},
            "trainer": {"steps": 1, "prompts_per_step": 8, "micro_batch_size": args.micro_batch_size, "lr": 1e-6,
                        "output_dir": tmp, "progress": False, "resume": False},
        })  # fmt: skip
        trainer = RLTrainer(config, model=model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer=tok)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        m = trainer.step(1)
        step_s = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else float("nan")
        est = estimate_memory(trainer.unwrapped.policy, config, seq_len=16 + args.max_new_tokens)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    lines = [
        "# One GRPO step at 0.5B scale (random-init Qwen2, bf16 weights + fp32 masters, micro-batches)",
        "",
        f"Written by `python benchmarks/rl_gpu_step.py{' --tiny' if args.tiny else ''}` on {device}.",
        f"Parameters: {n_params / 1e6:.0f}M; 8 prompts × 8 responses, up to {args.max_new_tokens} new tokens;",
        f"micro-batch {args.micro_batch_size}; gradient checkpointing; reference model (KL 0.001).",
        "",
        "| peak GPU memory (GiB) | estimated (GiB) | step time (s) | rollout (s) | mean response length |",
        "|---|---|---|---|---|",
        f"| {peak:.2f} | {est['total']:.2f} | {step_s:.1f} | {m['rollout_s']:.1f} | {m['total_length']:.0f} |",
        "",
    ]
    with atomic_write(args.out) as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
