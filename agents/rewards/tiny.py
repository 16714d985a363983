"""A tiny random-init Qwen2 judge with a locally trained tokenizer, for tests, benchmarks and CPU smoke runs.

The tokenizer is a byte-level BPE trained on the texts the judge will see, with the judges' tags
(`<verdict>`, `<critique>`, `<choice>`, `<criteria>`, …) as single tokens, so a tiny model can learn the
output format in a few steps. The folder loads with `AutoModelForCausalLM` / `AutoTokenizer` like any
checkpoint (`hf:PATH` for `embedkit rewards eval`, `policy.model: PATH` in an RL config).

    path = build_tiny_judge("runs/tiny-judge", texts=[record["prompt"] for record in records])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

JUDGE_TAGS = ["<verdict>", "</verdict>", "<critique>", "</critique>", "<choice>", "</choice>", "<criteria>",
              "</criteria>", "<plan>", "</plan>", "<think>", "</think>", "<answer>", "</answer>"]  # fmt: skip
EOS = "<|endoftext|>"


def build_judge_tokenizer(texts: Iterable[str], vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on `texts` (any text encodes), tags as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    lines = [line for text in texts for line in text.splitlines() if line.strip()] or ["A B"]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)
    wrapped.add_tokens(JUDGE_TAGS)  # whole tags, so "<verdict>A</verdict>" is three tokens
    return wrapped


def build_tiny_judge(out: str | Path, texts: Iterable[str], *, hidden_size: int = 64, layers: int = 2,
                     vocab_size: int = 600, max_positions: int = 2048, seed: int = 0) -> Path:  # fmt: skip
    """Save a random-init Qwen2 causal LM (≈`hidden_size`² · layers · 12 parameters) and its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    tokenizer = build_judge_tokenizer(texts, vocab_size)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
