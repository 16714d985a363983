"""The batch verl's v1 trainer hands `update_actor`, built from left/right-padded tensors (tests, benchmarks).

    data = actor_batch({"prompts": ..., "responses": ..., "input_ids": ..., "attention_mask": ...,
                        "position_ids": ..., "response_mask": ..., "old_log_probs": ..., "advantages": ...},
                       domains=["math", "chat", ...], temperature=0.7)
    worker.update_actor(data)

verl's own `left_right_2_no_padding` makes the no-padding layout; the non-tensor fields are those the v1 trainer
adds in `_update_actor` (temperature, calculate_entropy, mini-batch size, epochs, seed, dataloader settings) and
`data_source` (the domain MGS reads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def actor_batch(fields: Mapping[str, torch.Tensor], *, domains: Sequence[str] | None = None, temperature: float = 1.0,
                mini_batch_size: int | None = None, calculate_entropy: bool = False, epochs: int = 1,
                seed: int = 1) -> Any:  # fmt: skip
    """verl's no-padding TensorDict of `fields` with the trainer's update settings."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    n = fields["input_ids"].shape[0]
    data = left_right_2_no_padding(TensorDict({k: v.clone() for k, v in fields.items()}, batch_size=[n]))
    if domains is not None:
        tu.assign_non_tensor_stack(data, "data_source", list(domains))
    size = mini_batch_size or n
    tu.assign_non_tensor(data, temperature=temperature, calculate_entropy=calculate_entropy, global_batch_size=size,
                         mini_batch_size=size, epochs=epochs, seed=seed, dataloader_kwargs={"shuffle": False})  # fmt: skip
    return data
