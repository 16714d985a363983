"""`embedkit index reencode`: re-encode an index's documents with another (e.g. updated/merged) model."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli._common import add_command, add_device_and_batch_size, add_quiet_argument, positive_int

EXAMPLES = """\
  embedkit index reencode indexes/scifact --model runs/boom-v2/model            # replace in place (atomic)
  embedkit index reencode indexes/scifact --model runs/boom-v2/model --out indexes/scifact-v2
  embedkit index reencode indexes/scifact --model runs/boom-v2/model --index-factory HNSW32 --out indexes/hnsw
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "reencode",
        run,
        help="re-encode an index's documents with a new model (after a BOOM update)",
        description=(
            "Read the documents stored in a dense index, encode them with --model and write a new index.\n"
            "Query/passage prefixes, normalization, max length and the FAISS factory are kept from the old\n"
            "index unless given. Without --out the index is replaced atomically: searchers see the old or\n"
            "the new index, never a mix."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("index", help="dense index folder")
    parser.add_argument("--model", required=True, help="the new sentence-transformers model (folder or hub id)")
    parser.add_argument("--out", help="write the new index here (default: replace INDEX)")
    parser.add_argument("--index-factory", help="FAISS factory for the new index (default: the old one)")
    parser.add_argument("--query-prefix", help="default: the old index's query prefix")
    parser.add_argument("--passage-prefix", help="default: the old index's passage prefix")
    parser.add_argument("--max-length", type=positive_int, help="default: the old index's")
    add_device_and_batch_size(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from embedkit.index.lifecycle import reencode_index

    out = reencode_index(
        args.index,
        args.model,
        out=args.out,
        factory=args.index_factory,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    print(f"re-encoded {args.index} with {args.model} -> {Path(out)}")
    return 0
