"""Tiny character-level tokenizers and causal LMs for tests, benchmarks and CPU smoke runs.

    tokenizer = build_char_tokenizer()            # a real `PreTrainedTokenizerFast`
    model = build_tiny_causal_lm(tokenizer)       # a random-init GPT-2 with 2 layers
"""

from __future__ import annotations

import string
from typing import Any

# Tags used by the tool-calling format get one token each, so a tiny model learns the format quickly.
TAG_TOKENS = [
    "<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>",
    "<think>", "</think>", "<plan>", "</plan>",
]  # fmt: skip
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list(string.ascii_lowercase + string.digits + " .,:;?!=+-*/()_'\"\n>|")


def build_char_tokenizer(extra_tokens: list[str] | None = None) -> Any:
    """A character-level HF fast tokenizer: every character is a token, tags are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tags = TAG_TOKENS + list(extra_tokens or [])
    vocab_list = SPECIAL_TOKENS + tags + [c for c in CHARS if c not in tags]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    alternatives = "|".join(_escape(t) for t in sorted(tags, key=len, reverse=True))
    # "." does not match a newline; without "\\n" consecutive newlines would become one unknown token
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}|\\n|."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def build_tiny_causal_lm(tokenizer: Any, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                         n_positions: int = 256, seed: int = 0) -> Any:  # fmt: skip
    """A random-init GPT-2 sized for CPU tests (≈100k parameters)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)
