"""Supervised warm-up on task demonstrations, so a fresh policy emits the expected format before RL."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from agents.rl.tasks import Example

INFO_RE = re.compile(r"<information>.*?</information>", re.DOTALL)


def demonstration_tokens(tokenizer: Any, example: Example, chat_template: bool = False) -> tuple[list[int], list[int]]:
    """Prompt + demonstration ids and a label mask: 1 on demonstration tokens outside `<information>`; the
    prompt is encoded as the rollouts encode it (optionally as a chat-template user turn)."""
    from agents.rl.rollout import encode_prompt

    prompt_ids = encode_prompt(tokenizer, example.prompt, chat_template)
    ids, mask = list(prompt_ids), [0] * len(prompt_ids)
    text = example.demonstration or ""
    cursor = 0
    for match in INFO_RE.finditer(text):
        for piece, label in ((text[cursor : match.start()], 1), (match.group(0), 0)):
            piece_ids = tokenizer.encode(piece, add_special_tokens=False)
            ids += piece_ids
            mask += [label] * len(piece_ids)
        cursor = match.end()
    tail = tokenizer.encode(text[cursor:], add_special_tokens=False)
    ids += tail
    mask += [1] * len(tail)
    return ids, mask


def sft_warmup(model: Any, tokenizer: Any, examples: Sequence[Example], *, steps: int, lr: float = 1e-3,
               batch_size: int = 32, seed: int = 0, chat_template: bool = False) -> list[float]:  # fmt: skip
    """A few AdamW steps of next-token cross-entropy on the demonstrations; returns the losses."""
    demos = [e for e in examples if e.demonstration]
    if steps <= 0 or not demos:
        return []
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        rows = [demonstration_tokens(tokenizer, rng.choice(demos), chat_template) for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, mask) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
            labels[r, : len(ids)] = torch.tensor([i if m else -100 for i, m in zip(ids, mask, strict=True)])
        out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses
