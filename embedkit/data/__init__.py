"""Readers and writers for the formats users already have: BEIR, pyserini jsonl, TREC runs and qrels."""

from embedkit.data._files import iter_json_lines
from embedkit.data.corpus import Document, FieldMap, count_documents, iter_documents
from embedkit.data.qrels import Qrels, load_qrels
from embedkit.data.queries import load_queries
from embedkit.data.runs import Run, read_run, write_jsonl_run, write_trec_run

__all__ = [
    "Document",
    "FieldMap",
    "Qrels",
    "Run",
    "count_documents",
    "iter_documents",
    "iter_json_lines",
    "load_qrels",
    "load_queries",
    "read_run",
    "write_jsonl_run",
    "write_trec_run",
]
