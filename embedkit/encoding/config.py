"""What the user asks of an encoder (`EncoderConfig`) and what an index records about it (`EncoderSpec`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL

DEFAULT_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
#: What runs the model: torch, or ONNX Runtime on the CPU (see `embedkit.encoding.onnx_backend`).
Backend = Literal["torch", "onnx"]


class EncoderConfig(BaseModel):
    """Settings for encoding queries and documents.

    >>> config = EncoderConfig(model="intfloat/e5-small-v2", query_prefix="query: ", passage_prefix="passage: ")
    >>> config.query_prefix, config.normalize
    ('query: ', True)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    query_prefix: str | None = Field(None, description="prefix for queries; None uses the model's saved 'query' prompt")
    passage_prefix: str | None = Field(None, description="prefix for documents; None uses the model's saved prompt")
    query_instruction: str | None = Field(None, description="task instruction; formatted with instruction_template")
    instruction_template: str = DEFAULT_INSTRUCTION_TEMPLATE
    normalize: bool = True
    max_length: int | None = None
    batch_size: int = Field(DEFAULT_BATCH_SIZE, gt=0)
    device: str = "auto"
    dtype: Dtype = "auto"
    backend: Backend = Field("torch", description="torch, or onnx: the transformer exported once and run by ONNX "
                             "Runtime on the CPU (about 2x faster for one query at a time; same vectors)")
    chunk_size: int = Field(
        8192, gt=0, description="documents encoded per call; sorting by length happens within a chunk"
    )


class EncoderSpec(BaseModel):
    """Everything needed to encode queries exactly as an index's documents were encoded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = Field("sentence-transformers", description="which encoder registry entry rebuilds it")
    model: str
    fingerprint: str
    pooling: str
    normalize: bool
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int | None = None
    dim: int
    similarity: str = "cosine"
