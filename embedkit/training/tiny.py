"""Tiny random-init sentence-transformers models for smoke runs and tests (no model hub needed)."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A small word-piece vocabulary: enough real words that tokenized test sentences are not all [UNK].
_WORDS = (
    "the a an of to in on for and or is are was be by with what who where when how which why do does "
    "protein cell gene cancer virus dna rna study patients treatment disease blood brain heart risk "
    "city river country film music band album song player team game war king queen president born "
    "capital population company founded science physics chemistry biology computer data model paper "
    "query document passage answer question search retrieval embedding vector index merge train test"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!-'")


def write_vocab(path: str | Path) -> Path:
    """Write a BERT word-piece vocab.txt with special tokens, some words and single characters."""
    path = Path(path)
    pieces = SPECIAL_TOKENS + sorted(set(_WORDS)) + _CHARS + [f"##{c}" for c in _CHARS]
    path.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return path


def build_tiny_bert(
    out: str | Path,
    *,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    hidden_size: int = 32,
    layers: int = 2,
    prompts: dict[str, str] | None = None,
    max_seq_length: int = 64,
) -> Path:
    """Save a random-init BERT wrapped as a sentence-transformers model at `out`; returns `out`.

    >>> import tempfile
    >>> from sentence_transformers import SentenceTransformer
    >>> out = build_tiny_bert(f"{tempfile.mkdtemp()}/tiny", seed=1, pooling="cls")
    >>> SentenceTransformer(str(out)).encode(["a tiny model"]).shape
    (1, 32)
    """
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_vocab(Path(tmp) / "vocab.txt")
        # transformers 5 takes the vocabulary as `vocab=` and silently drops `vocab_file=` (leaving the five
        # special tokens, so every text became [UNK]s and all texts of one length got the same vector).
        tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
        if len(tokenizer) < len(_WORDS):
            raise RuntimeError(f"the tiny tokenizer holds {len(tokenizer)} tokens, not its vocabulary")
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=128,
        )
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=max_seq_length)
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
        if normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
        model.save(str(out), create_model_card=False)
    return out
