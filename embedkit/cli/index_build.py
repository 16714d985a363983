"""`embedkit index build` and `embedkit index info`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedkit.cli._common import (
    add_command,
    add_corpus_arguments,
    add_encoder_arguments,
    add_quiet_argument,
    encoder_config_from_args,
    field_map_from_args,
)

BUILD_EXAMPLES = """\
  embedkit index build --corpus ../shared/data/scifact/corpus.jsonl --out indexes/scifact
  embedkit index build --corpus docs.tsv --id-field pid --text-field passage \\
      --model intfloat/e5-small-v2 --passage-prefix 'passage: ' --query-prefix 'query: ' --out indexes/e5
  embedkit index build --corpus corpus.jsonl --index-factory IVF1024,PQ64 --train-sample 200000 --out indexes/ivfpq
  embedkit index build --corpus corpus.jsonl --index-factory HNSW32 --out indexes/hnsw
"""

KIND_BUILDERS: dict[str, str] = {
    # kind -> module exposing `add_build_arguments(parser)` and `build_from_args(args)`; lets other index
    # kinds (BM25) share this command.
    "bm25": "embedkit.lexical.cli_build",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "build",
        build,
        help="encode a corpus and write an index folder",
        description=(
            "Encode a corpus with a sentence-transformers model and write an index folder: the FAISS index,\n"
            "a document store (text by id), and manifest.json recording how to query it. The folder is\n"
            "written under a temporary name and renamed when complete, so a crash never leaves half an index."
        ),
        examples=BUILD_EXAMPLES,
    )
    parser.add_argument("--kind", default="dense", choices=["dense", *KIND_BUILDERS], help="index kind (default: dense)")
    parser.add_argument("--out", required=True, help="index folder to write, e.g. indexes/NAME")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    add_corpus_arguments(parser)
    add_encoder_arguments(parser, model_default=None)
    group = parser.add_argument_group("FAISS")
    group.add_argument("--index-factory", default="Flat",
                       help="any FAISS index-factory string: Flat, HNSW32, IVF4096,Flat, IVF4096,PQ64, OPQ64,IVF4096,PQ64, … (default: Flat)")
    group.add_argument("--metric", default="ip", choices=["ip", "l2"], help="inner product (cosine when normalized) or L2")
    group.add_argument("--train-sample", type=int, default=100_000, help="vectors used to train IVF/PQ indexes (default: 100000)")
    group.add_argument("--store-vectors", default="auto", choices=["auto", "float16", "float32", "none"],
                       help="keep the vectors in the folder for compact/merge/tune (auto: float16 for lossy kinds)")
    group.add_argument("--on-disk", action="store_true",
                       help="IVF only: inverted lists in index.ivfdata, read from disk (corpora larger than RAM)")
    for module_name in KIND_BUILDERS.values():
        try:
            module = __import__(module_name, fromlist=["add_build_arguments"])
        except ModuleNotFoundError:
            continue
        module.add_build_arguments(parser)
    add_quiet_argument(parser)

    info = add_command(subparsers, "info", show_info, help="print an index's manifest",
                       examples="  embedkit index info indexes/scifact\n")
    info.add_argument("index", help="index folder")


def build(args: argparse.Namespace) -> int:
    if args.kind != "dense":
        module = __import__(KIND_BUILDERS[args.kind], fromlist=["build_from_args"])
        return module.build_from_args(args)
    from embedkit.data.corpus import count_documents, iter_documents
    from embedkit.encoding.encoder import Encoder
    from embedkit.errors import EmbedkitError
    from embedkit.index.dense import build_dense_index

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise EmbedkitError(f"{out} already exists (use --overwrite to replace it)")
    encoder = Encoder(encoder_config_from_args(args))
    documents = iter_documents(args.corpus, field_map_from_args(args))
    build_dense_index(documents, encoder, out, factory=args.index_factory, metric=args.metric,
                      train_sample=args.train_sample, overwrite=args.overwrite,
                      total=count_documents(args.corpus), quiet=args.quiet, corpus=str(args.corpus),
                      store_vectors=args.store_vectors, on_disk=args.on_disk)
    from embedkit.index.manifest import IndexManifest

    manifest = IndexManifest.load(out)
    print(f"wrote {out}: {manifest.num_docs} documents, {manifest.index_factory}, dim {manifest.encoder.dim}")
    return 0


def show_info(args: argparse.Namespace) -> int:
    from embedkit.index.manifest import IndexManifest

    manifest = IndexManifest.load(args.index)
    manifest.check_files(Path(args.index))
    print(json.dumps(manifest.model_dump(), indent=2))
    return 0
