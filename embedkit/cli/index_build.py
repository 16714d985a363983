"""`embedkit index build`, `embedkit index info` and `embedkit index verify`.

`index build --kind KIND` builds any kind registered in `embedkit.index.kinds.INDEX_KINDS`. Each kind's flags
live in their own argument group (`KIND_FLAGS`); a flag of another kind is refused, not ignored.
"""

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
    positive_int,
)

BUILD_EXAMPLES = """\
  embedkit index build --corpus ../shared/data/scifact/corpus.jsonl --out indexes/scifact
  embedkit index build --corpus docs.tsv --id-field pid --text-field passage \\
      --model intfloat/e5-small-v2 --passage-prefix 'passage: ' --query-prefix 'query: ' --out indexes/e5
  embedkit index build --corpus corpus.jsonl --index-factory IVF1024,PQ64 --train-sample 200000 --out indexes/ivfpq
  embedkit index build --corpus corpus.jsonl --index-factory HNSW32 --out indexes/hnsw
  embedkit index build --kind bm25 --corpus ../shared/data/scifact/corpus.jsonl --out indexes/scifact-bm25
  embedkit index build --kind bm25 --backend bm25s --k1 1.2 --b 0.75 --corpus corpus.jsonl --out indexes/b
  embedkit index build --kind bm25 --fields contents=1.0 title=1.0 --corpus corpus.jsonl --out indexes/mf
"""
VERIFY_EXAMPLES = """\
  embedkit index verify indexes/scifact           # every file's SHA-256 and the document counts
"""
KINDS = ("dense", "bm25")
# Flags (argparse dests) that belong to one kind only; given with another kind they are an error.
KIND_FLAGS: dict[str, set[str]] = {"dense": set(), "bm25": set()}
_DEFAULTS: dict[str, object] = {}
_OPTION_NAMES: dict[str, str] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "build",
        build,
        help="encode a corpus and write an index folder",
        description=(
            "Write an index folder: a dense FAISS index (the corpus encoded with a sentence-transformers model)\n"
            "or a BM25 index, with a document store (text by id) and manifest.json recording how to query it.\n"
            "The folder is written under a temporary name and swapped in when complete, so a crash never leaves\n"
            "half an index; --overwrite replaces only an earlier embedkit index, never another folder or a file."
        ),
        examples=BUILD_EXAMPLES,
    )
    parser.add_argument("--kind", default="dense", choices=KINDS, help="index kind (default: dense)")
    parser.add_argument("--out", required=True, help="index folder to write, e.g. indexes/NAME")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    add_corpus_arguments(parser)
    before = set(_dests(parser))
    add_encoder_arguments(parser, model_default=None)
    group = parser.add_argument_group("FAISS (--kind dense)")
    group.add_argument("--index-factory", default="Flat",
                       help="any FAISS index-factory string: Flat, HNSW32, IVF4096,Flat, IVF4096,PQ64, "
                            "OPQ64,IVF4096,PQ64, … (default: Flat)")
    group.add_argument("--metric", default="ip", choices=["ip", "l2"],
                       help="inner product (cosine when normalized) or L2")
    group.add_argument("--train-sample", type=positive_int, default=100_000,
                       help="vectors used to train IVF/PQ indexes (default: 100000)")
    group.add_argument("--store-vectors", default="auto", choices=["auto", "float16", "float32", "none"],
                       help="keep the vectors in the folder for compact/merge/tune (auto: float16 for lossy kinds)")
    group.add_argument("--on-disk", action="store_true",
                       help="IVF only: inverted lists in index.ivfdata, read from disk (corpora larger than RAM)")
    KIND_FLAGS["dense"] = set(_dests(parser)) - before
    before = set(_dests(parser))
    _add_bm25_arguments(parser)
    KIND_FLAGS["bm25"] = set(_dests(parser)) - before
    # Kind-specific flags are left out of the namespace unless given, so a flag of the wrong kind is detected
    # (and `--batch-size 64` counts as given even though it equals the default).
    for action in parser._actions:
        if action.dest in KIND_FLAGS["dense"] | KIND_FLAGS["bm25"]:
            _DEFAULTS[action.dest] = action.default
            _OPTION_NAMES[action.dest] = max(action.option_strings, key=len)
            action.default = argparse.SUPPRESS
    add_quiet_argument(parser)

    info = add_command(subparsers, "info", show_info, help="print an index's manifest",
                       examples="  embedkit index info indexes/scifact\n")
    info.add_argument("index", help="index folder")

    verify = add_command(subparsers, "verify", run_verify,
                         help="check every byte of an index against the checksums in its manifest",
                         description="Read every file of an index folder and compare it with the size and SHA-256\n"
                                     "recorded in manifest.json, then check the document counts. Exit status 2\n"
                                     "and a message naming the damaged file when anything differs.",
                         examples=VERIFY_EXAMPLES)
    verify.add_argument("index", help="index folder")


def _dests(parser: argparse.ArgumentParser) -> list[str]:
    return [action.dest for action in parser._actions]


def _add_bm25_arguments(parser: argparse.ArgumentParser) -> None:
    from embedkit.lexical.backends import BACKENDS

    group = parser.add_argument_group("BM25 (--kind bm25)")
    group.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                       help="pyserini (Lucene, needs Java 21+; OUT/lucene stores each document's raw JSON, so "
                            "Search-R1's/FlashRAG's BM25 retriever can open it) or bm25s (embedded, no JVM); "
                            "auto: pyserini when Java 21+ is found, else bm25s")
    group.add_argument("--k1", type=float, default=0.9, help="BM25 term-frequency saturation (default: 0.9)")
    group.add_argument("--b", type=float, default=0.4, help="BM25 length normalization, 0..1 (default: 0.4)")
    group.add_argument("--fields", nargs="+", metavar="FIELD=WEIGHT",
                       help="index the title as its own field and weigh both at search time, e.g. "
                            "'contents=1.0 title=1.0' (pyserini only; default: title and text as one field)")
    group.add_argument("--threads", type=positive_int, default=1,
                       help="indexing/search threads for pyserini (default: 1)")
    group.add_argument("--language", default="english", help="analyzer language (default: english)")


def _kind_arguments(args: argparse.Namespace) -> None:
    """Refuse flags of another kind; fill in the defaults of this kind's flags that were not given."""
    from embedkit.errors import EmbedkitError

    foreign = sorted(_OPTION_NAMES[dest] for kind, dests in KIND_FLAGS.items() if kind != args.kind
                     for dest in dests if hasattr(args, dest) and dest not in KIND_FLAGS[args.kind])
    if foreign:
        raise EmbedkitError(f"{', '.join(foreign)} do(es) not apply to --kind {args.kind}; "
                            f"see `embedkit index build --help` for each kind's options")
    for dest, default in _DEFAULTS.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)


def build(args: argparse.Namespace) -> int:
    from embedkit.data.corpus import count_documents, iter_documents
    from embedkit.index.kinds import build_index
    from embedkit.index.manifest import MANIFEST_NAME, BM25Manifest, IndexManifest
    from embedkit.io import check_replaceable

    _kind_arguments(args)
    out = Path(args.out)
    # Before loading a model or reading the corpus: is --out ours to write?
    check_replaceable(out, overwrite=args.overwrite, marker=MANIFEST_NAME, what="embedkit index")
    options = _bm25_options(args) if args.kind == "bm25" else _dense_options(args)
    documents = iter_documents(args.corpus, field_map_from_args(args))
    total = count_documents(args.corpus) if args.kind == "dense" else None
    build_index(args.kind, documents, out, options, overwrite=args.overwrite, corpus=str(args.corpus), total=total,
                quiet=args.quiet)
    manifest = IndexManifest.load(out)
    if isinstance(manifest, BM25Manifest):
        settings = manifest.settings
        layout = "title and text as separate fields" if settings.multifield else "title and text as one field"
        print(f"wrote {out}: {manifest.num_docs} documents, BM25 ({settings.backend}, k1={settings.k1}, "
              f"b={settings.b}, {layout})")
    else:
        print(f"wrote {out}: {manifest.num_docs} documents, {manifest.index_factory}, dim {manifest.encoder.dim}")
    return 0


def _dense_options(args: argparse.Namespace):
    from embedkit.index.dense import DenseBuildOptions
    from embedkit.index.faiss_ops import check_factory

    check_factory(args.index_factory)
    return DenseBuildOptions(encoder=encoder_config_from_args(args), factory=args.index_factory, metric=args.metric,
                             train_sample=args.train_sample, store_vectors=args.store_vectors, on_disk=args.on_disk)


def _bm25_options(args: argparse.Namespace):
    from embedkit.errors import EmbedkitError
    from embedkit.index.kinds import parse_options
    from embedkit.lexical.backends import resolve_backend
    from embedkit.lexical.settings import BM25Settings, parse_fields

    fields = parse_fields(args.fields)
    backend = resolve_backend(args.backend)
    if args.backend == "auto" and backend == "bm25s" and fields and "title" in fields:
        raise EmbedkitError("--fields with a separate title needs the pyserini backend, which needs Java 21+; "
                            "no Java 21+ was found (see `embedkit.lexical.java`), or drop --fields")
    return parse_options(BM25Settings, {"backend": backend, "k1": args.k1, "b": args.b, "fields": fields,
                                        "threads": args.threads, "language": args.language}, "BM25 settings")


def show_info(args: argparse.Namespace) -> int:
    from embedkit.index.kinds import INDEX_KINDS
    from embedkit.index.manifest import BM25Manifest, DenseManifest, IndexManifest

    manifest = IndexManifest.load(args.index)
    INDEX_KINDS.get(manifest.kind).check(Path(args.index), manifest)
    data = manifest.model_dump(mode="json")
    if isinstance(manifest, DenseManifest):  # segments, their sizes and deleted fractions; retraining due
        from embedkit.index.segments import segment_status

        data["status"] = segment_status(Path(args.index), manifest)
    elif isinstance(manifest, BM25Manifest):  # the same keys as a dense folder's, as far as BM25 has them
        data["status"] = {"layout": "segmented" if manifest.segments else "single",
                          "segments": [{"id": s.name, "documents": s.documents - s.deleted,
                                        "deleted_fraction": round(s.deleted_fraction, 4), "bytes": s.size}
                                       for s in manifest.segments],
                          "merge_policy": manifest.settings.merge.model_dump(mode="json")}
        from embedkit.lexical.index import docstore_status

        data["status"].update(docstore_status(Path(args.index), manifest))  # document-store parts
    print(json.dumps(data, indent=2))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from embedkit.index.kinds import verify_index

    print(verify_index(args.index).summary())
    return 0
