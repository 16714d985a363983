"""`embedkit index import`: a prebuilt FAISS index and its corpus (Search-R1 / FlashRAG layout) as an index folder."""

from __future__ import annotations

import argparse

from embedkit.cli._common import add_command, add_corpus_arguments, add_encoder_arguments, add_quiet_argument

EXAMPLES = """\
  # Search-R1's wiki-18 e5 index: row i of e5_Flat.index is line i of wiki-18.jsonl
  embedkit index import --faiss e5_Flat.index --corpus wiki-18.jsonl --model intfloat/e5-base-v2 \\
      --pooling mean --query-prefix "query: " --out indexes/wiki18-e5
  embedkit index import --faiss e5_Flat.index --corpus wiki-18.jsonl --model intfloat/e5-base-v2 \\
      --pooling mean --query-prefix "query: " --copy --out indexes/wiki18-e5     # a self-contained folder
  embedkit serve --index indexes/wiki18-e5 --mmap                                 # then Search-R1's /retrieve
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "import", run,
        help="turn a prebuilt FAISS index + its corpus (Search-R1/FlashRAG layout) into an index folder",
        description=(
            "Write an embedkit dense index folder from a FAISS index file built elsewhere and the corpus it was\n"
            "built from, without re-encoding: row i of the FAISS index must be record i of the corpus (the layout\n"
            "of Search-R1's and FlashRAG's e5_Flat.index + wiki-18.jsonl). The model (and its prefixes) that made\n"
            "the vectors is recorded, so queries are encoded the same way; search results are the rows plain\n"
            "FAISS returns. The FAISS file is symlinked (--link, the default) or copied (--copy)."
        ),
        examples=EXAMPLES,
    )  # fmt: skip
    parser.add_argument("--faiss", required=True, help="the FAISS index file (faiss.write_index output)")
    add_corpus_arguments(parser)
    add_encoder_arguments(parser, model_default=None)
    parser.add_argument("--pooling", help="the pooling the vectors were made with (mean, cls, …); checked against "
                                          "the model's, which is what query encoding uses")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--link", dest="link", action="store_true", default=True,
                      help="symlink the FAISS file into the folder (default; the original must stay in place)")
    mode.add_argument("--copy", dest="link", action="store_false", help="copy the FAISS file into the folder")
    parser.add_argument("--out", "-o", required=True, help="index folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index folder at --out")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    from embedkit.cli._common import encoder_config_from_args, field_map_from_args
    from embedkit.encoding import Encoder
    from embedkit.errors import EmbedkitError
    from embedkit.index.prebuilt import import_faiss_index

    if not args.model:
        raise EmbedkitError("--model is required: the model that produced the index's vectors")
    encoder = Encoder(encoder_config_from_args(args))
    out = import_faiss_index(args.faiss, args.corpus, encoder, args.out, pooling=args.pooling, link=args.link,
                             overwrite=args.overwrite, fields=field_map_from_args(args), quiet=args.quiet)  # fmt: skip
    how = "linked" if args.link else "copied"
    print(f"imported {args.faiss} ({how}) with {args.corpus} -> {out}")
    return 0
