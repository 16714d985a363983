"""Defaults shared by several commands: one place per setting."""

#: Texts per encoder forward pass (encoding, indexing, serving, training evaluation).
DEFAULT_BATCH_SIZE = 64
