"""One GRPO step with micro-batching and bf16 on a random-init Qwen2 model of about 0.5B parameters (the
Qwen2.5-0.5B shape), recording peak GPU memory and step time. Needs a GPU; `--tiny` runs a small shape on CPU
to check the script.

    python benchmarks/rl_gpu_step.py                      # writes benchmarks/rl_gpu_step_results.md
    python benchmarks/rl_gpu_step.py --tiny --out /tmp/x.md

`--verl`: the same step in verl 0.9.1's own actor worker, with embedkit's TRE-K and then with MGS
(`agents.rl.verl.actor`): responses sampled from the policy with transformers' `generate` (verl's rollout
server, vLLM/SGLang, is not needed for the actor step), a format reward, verl's `compute_advantage` with
`embedkit_grpo`, then `update_actor` on verl's FSDP2 engine in bf16; writes benchmarks/rl_gpu_step_verl.md.
On a machine without a GPU it composes verl's config and checks the settings, then stops with exit 2 where the
first GPU call would be. A GPU machine without a package index needs the wheels brought along (docs/rl.md,
"verl on a GPU machine"):

    python benchmarks/rl_gpu_step.py --verl               # about 2 minutes on one H100 (model + 2 steps)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--verl", action="store_true", help="the step in verl's actor worker, with TRE and with MGS")
    args = parser.parse_args()
    if args.verl:
        raise SystemExit(verl_main(args))
    args.out = args.out or ROOT / "benchmarks" / "rl_gpu_step_results.md"
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


QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)  # fmt: skip
VERL_RUNS = {"TRE-K": ["+actor_rollout_ref.embedkit.tre.kind=tre_k", "+actor_rollout_ref.embedkit.tre.coef=0.001"],
             "MGS": ["+actor_rollout_ref.embedkit.mgs.surgery=mgs"]}  # fmt: skip
DOMAINS = ("math", "chat")


def _write_model(folder: Path, tiny: bool) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.rl.toy import build_char_tokenizer

    tok = build_char_tokenizer()
    shape = dict(QWEN_05B, vocab_size=151936)
    if tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=len(tok))  # fmt: skip
    torch.manual_seed(0)
    config = Qwen2Config(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def _verl_overrides(model_dir: Path, args: argparse.Namespace, n: int) -> list[str]:
    return [f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.actor.strategy=fsdp2",
            "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
            "actor_rollout_ref.model.enable_gradient_checkpointing=true", "actor_rollout_ref.actor.use_torch_compile=false",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch_size}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={n}", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
            "algorithm.adv_estimator=embedkit_grpo", "trainer.v1.trainer_mode=embedkit_sync"]  # fmt: skip


def _rollout(model_dir: Path, tok: Any, groups: int, group_size: int, max_new_tokens: int, device: str) -> dict:
    """Prompts of random characters, `group_size` sampled responses each (transformers' generate at T=1), a
    format reward (the fraction of digits), GRPO advantages from verl's `compute_advantage` (embedkit_grpo)."""
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from agents.rl.losses import token_log_probs

    policy = Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompt_len = 16
    low = tok.convert_tokens_to_ids("a")
    prompts = torch.randint(low, low + 26, (groups, prompt_len), generator=g).repeat_interleave(group_size, 0)
    with torch.no_grad():
        out = policy.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device), do_sample=True,
                              max_new_tokens=max_new_tokens, min_new_tokens=1, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)  # fmt: skip
    responses = out[:, prompt_len:].cpu()
    responses = torch.nn.functional.pad(responses, (0, max_new_tokens - responses.shape[1]), value=tok.pad_token_id)
    after_eos = (responses == tok.eos_token_id).long().cumsum(-1) - (responses == tok.eos_token_id).long()
    response_mask = ((after_eos == 0) & (responses != tok.pad_token_id)).long()
    response_mask[:, 0] = 1
    digits = torch.tensor([[t.isdigit() for t in tok.convert_ids_to_tokens(row)] for row in responses.tolist()])
    score = (digits & response_mask.bool()).sum(-1) / response_mask.sum(-1)
    attention_mask = torch.cat([torch.ones_like(prompts), response_mask], 1)
    input_ids = torch.cat([prompts, responses], 1)
    old_parts = []
    with torch.no_grad():  # 8 rows at a time: a [64, 528, 151936] logits tensor would take tens of GiB
        for s in range(0, len(input_ids), 8):
            logits = policy(input_ids=input_ids[s : s + 8].to(device),
                            attention_mask=attention_mask[s : s + 8].to(device)).logits  # fmt: skip
            part = token_log_probs(logits[:, prompt_len - 1 : -1], responses[s : s + 8].to(device))
            old_parts.append(part.float().cpu())
            del logits
    old = torch.cat(old_parts)
    token_rewards = torch.zeros(responses.shape, dtype=torch.float32)
    token_rewards[torch.arange(len(score)), response_mask.sum(-1) - 1] = score.float()
    uid = np.array([f"q{i // group_size}" for i in range(len(score))], dtype=object)
    data = DataProto.from_dict(tensors={"token_level_rewards": token_rewards, "response_mask": response_mask.float()},
                               non_tensors={"uid": uid})  # fmt: skip
    data = compute_advantage(data, adv_estimator="embedkit_grpo", num_repeat=group_size, config={})
    del policy
    return {"prompts": prompts, "responses": responses, "input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask.float(),
            "old_log_probs": old * response_mask, "advantages": data.batch["advantages"],
            "mean_reward": float(score.mean()), "mean_length": float(response_mask.sum(-1).float().mean())}  # fmt: skip


def verl_main(args: argparse.Namespace) -> int:
    """The verl step with TRE-K and with MGS; exit 2 with a message before the first GPU call on a CPU."""
    import torch

    from agents.rl.verl.actor import actor_settings, check_supported
    from agents.rl.verl.launcher import compose
    from agents.rl.verl.plugin import register_all
    from embedkit.errors import EmbedkitError
    from embedkit.io import atomic_write

    groups, group_size = (2, 4) if args.tiny else (8, 8)
    n = groups * group_size
    out_path = args.out or ROOT / "benchmarks" / "rl_gpu_step_verl.md"
    register_all()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        tok = _write_model(model_dir, args.tiny)
        configs = {}
        for label, extra in VERL_RUNS.items():
            config = compose(_verl_overrides(model_dir, args, n) + extra)
            check_supported(config.actor_rollout_ref, actor_settings(config.actor_rollout_ref))
            configs[label] = config
        if not torch.cuda.is_available():
            print("error: no GPU here (torch.cuda.is_available() is False): the next step builds verl's FSDP2 actor "
                  "on cuda and samples on it. Done so far: model written, verl's config composed for "
                  f"{' and '.join(VERL_RUNS)}, embedkit's actor settings checked", file=sys.stderr)  # fmt: skip
            return 2
        try:
            rows = _verl_runs(model_dir, tok, configs, args, groups, group_size)
        except EmbedkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    import verl

    lines = [
        "# One GRPO step in verl's actor worker with embedkit's TRE-K and MGS (random-init Qwen2, bf16)",
        "",
        f"Written by `python benchmarks/rl_gpu_step.py --verl{' --tiny' if args.tiny else ''}` on "
        f"{torch.cuda.get_device_name()}, verl {verl.__version__}, torch {torch.__version__}.",
        f"{groups} prompts × {group_size} responses (transformers `generate`, T=1), up to {args.max_new_tokens} new "
        f"tokens; micro-batch {args.micro_batch_size}; gradient checkpointing; FSDP2 on one GPU.",
        "",
        "| run | peak GPU memory (GiB) | update_actor (s) | pg_loss | grad_norm | TRE entropy | domains |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    with atomic_write(out_path) as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


def _first(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return "–" if value is None else f"{float(value):.4g}"


def _verl_runs(model_dir: Path, tok: Any, configs: dict, args: argparse.Namespace, groups: int,
               group_size: int, device: str = "cuda") -> list[str]:  # fmt: skip
    """Rollout, then one `update_actor` per configuration; `device="cpu"` (tests, with a CPU verl platform)
    runs the same calls without the GPU timings."""
    import os
    import time

    import torch
    import torch.distributed as dist

    from agents.rl.verl.actor import EmbedkitActorRolloutRefWorker
    from agents.rl.verl.batch import actor_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")  # fmt: skip
    gpu = device == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", rank=0, world_size=1)
    rollout = _rollout(model_dir, tok, groups, group_size, args.max_new_tokens, device)
    fields = {k: v for k, v in rollout.items() if isinstance(v, torch.Tensor)}
    domains = [DOMAINS[(i // group_size) % len(DOMAINS)] for i in range(len(fields["prompts"]))]
    rows = []
    for label, config in configs.items():
        worker = EmbedkitActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
        worker.init_model()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = worker.update_actor(actor_batch(fields, domains=domains, temperature=1.0))
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        metrics = dict(out["metrics"])
        peak = f"{torch.cuda.max_memory_allocated() / 1024**3:.2f}" if gpu else "–"
        rows.append(f"| {label} | {peak} | {seconds:.1f} | {_first(metrics, 'actor/pg_loss')} | "
                    f"{_first(metrics, 'grad_norm')} | {_first(metrics, 'actor/tre_entropy')} | "
                    f"{_first(metrics, 'mgs/domains')} |")  # fmt: skip
        del worker
        if gpu:
            torch.cuda.empty_cache()
    rows.append(f"| (rollout) | – | – | mean reward {rollout['mean_reward']:.3f} | – | mean length "
                f"{rollout['mean_length']:.1f} | – |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
