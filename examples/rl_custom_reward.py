"""Plug your own reward and search tool into the RL loop.

    python examples/rl_custom_reward.py            # ~1-2 minutes on a laptop CPU

1. register a reward under a name (any callable RewardBatch -> list[float]);
2. give the trainer a tool: any `(query: str) -> str` (here a dict lookup; in practice
   `agents.rl.tasks.make_index_tool("indexes/my-index", k=3)` over an embedkit index);
3. train from a typed config; metrics land in runs/example/metrics.jsonl and metrics.csv.
"""

from __future__ import annotations

from agents.rl.config import RLConfig
from agents.rl.rewards import REWARDS, RewardBatch, extract_answer
from agents.rl.tasks import Example, Task
from agents.rl.trainer import RLTrainer


@REWARDS.register("answer_is_digit")
def answer_is_digit():
    """1 for a single-digit answer, 0 otherwise (a toy shaping reward)."""

    def reward(batch: RewardBatch) -> list[float]:
        return [float((extract_answer(r) or "").strip().isdigit()) for r in batch.responses]

    return reward


FACTS = {"apple": "7", "river": "3"}


def lookup(query: str) -> str:
    key = query.strip()
    return f"{key} is {FACTS[key]}" if key in FACTS else "no result"


task = Task(
    examples=[Example(f"find {k}:", v, demonstration=f"<search> {k} </search> <information> {k} is {v} "
                      f"</information> <answer> {v} </answer>") for k, v in FACTS.items()],  # fmt: skip
    tool=lookup,
)
config = RLConfig.from_dict({
    "task": {"name": "digit_map"},  # replaced by the Task object passed below
    "warmup": {"steps": 100, "lr": 1e-2, "batch_size": 8},
    "rollout": {"group_size": 4, "settings": {"max_new_tokens": 48, "max_turns": 1}},
    "reward": {"name": "answer_is_digit"},
    "metric_rewards": ["exact_match"],
    "trainer": {"steps": 10, "prompts_per_step": 4, "lr": 1e-3, "output_dir": "runs/example", "resume": False},
})  # fmt: skip

if __name__ == "__main__":
    history = RLTrainer(config, task=task).train()
    print({k: round(v, 3) for k, v in history[-1].items() if isinstance(v, float)})
