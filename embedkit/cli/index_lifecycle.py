"""`embedkit index add|remove|compact|merge-policy|merge|tune`: keep an index up to date and pick an index kind."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.cli._common import (
    add_command,
    add_corpus_arguments,
    add_encoder_runtime_arguments,
    add_quiet_argument,
    field_map_from_args,
    positive_int,
)

if TYPE_CHECKING:
    from embedkit.index.merge_policy import MergePolicy, Mode

ADD_EXAMPLES = """\
  embedkit index add indexes/scifact --corpus new_docs.jsonl         # new ids inserted, known ids replaced
  embedkit index add indexes/scifact --corpus updates.tsv --id-field pid --text-field passage
"""
REMOVE_EXAMPLES = """\
  embedkit index remove indexes/scifact --ids ids.txt                # one id per line
  embedkit index remove indexes/scifact --id 4983 --id 5836
"""
COMPACT_EXAMPLES = """\
  embedkit index compact indexes/hnsw                                # one segment, deleted rows dropped
  embedkit index compact indexes/flat --index-factory HNSW32         # rebuild as another kind, no re-encoding
  embedkit index compact indexes/scifact-bm25                        # BM25: one segment, deleted documents dropped
"""
POLICY_EXAMPLES = """\
  embedkit index merge-policy indexes/scifact                        # show the recorded policy
  embedkit index merge-policy indexes/scifact --max-segments 8       # updates keep at most 8 segments
  embedkit index merge-policy indexes/scifact-bm25 --max-deleted-fraction 0.1 --max-segments off
  embedkit index merge-policy indexes/scifact --mode never           # only `embedkit index compact` merges
  embedkit index merge-policy indexes/scifact --mode auto            # back on (the defaults after never)
"""
MERGE_EXAMPLES = """\
  embedkit index merge shards/ --out indexes/big                      # the output of `embedkit encode`
  embedkit index merge indexes/part1 indexes/part2 --out indexes/all --index-factory IVF4096,Flat
"""
TUNE_EXAMPLES = """\
  embedkit index tune indexes/scifact                                # 1000 documents as queries
  embedkit index tune indexes/scifact --queries ../shared/data/scifact/queries.jsonl --output tune.md
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    add = add_command(subparsers, "add", run_add, help="insert or replace (upsert) documents in an index",
                      description="Insert documents; a document whose id is already in the index replaces it.\n"
                                  "Dense: encoded with the index's own encoder (recorded in manifest.json) into a\n"
                                  "new segment; replaced rows go to small deletion files. BM25 (pyserini or bm25s):\n"
                                  "analysed as at build time into a new segment. Either way the update commits\n"
                                  "atomically when complete (docs/index-updates.md, docs/bm25-updates.md).",
                      examples=ADD_EXAMPLES)
    add.add_argument("index", help="index folder")
    add_corpus_arguments(add)
    add_encoder_runtime_arguments(add)
    add_quiet_argument(add)

    remove = add_command(subparsers, "remove", run_remove, help="delete documents from an index by id",
                         description="Delete documents by id: a small deletion file per segment touched masks their rows\n"
                                     "at search time until a merge (the merge policy, or `embedkit index compact`)\n"
                                     "drops them.",
                         examples=REMOVE_EXAMPLES)
    remove.add_argument("index", help="index folder")
    remove.add_argument("--ids", help="file with one document id per line")
    remove.add_argument("--id", action="append", default=[], dest="id_list", help="a document id (repeatable)")

    compact = add_command(subparsers, "compact", run_compact, help="merge an index's segments into one",
                          description="Rebuild the FAISS index from the stored vectors of the live documents (no\n"
                                      "re-encoding): merges all segments into one, drops deleted rows and\n"
                                      "retrains IVF/PQ on the current corpus. The merge-policy flags set when\n"
                                      "updates merge segments on their own (recorded in the manifest).",
                          examples=COMPACT_EXAMPLES)
    compact.add_argument("index", help="index folder")
    compact.add_argument("--index-factory", help="rebuild as another FAISS kind (default: the current one)")
    compact.add_argument("--train-sample", type=positive_int, default=100_000)
    # The merge-policy flags of compact came first; they stay as aliases of `embedkit index merge-policy`.
    compact.add_argument("--merge-policy", choices=["auto", "never"], dest="mode",
                         help="as `embedkit index merge-policy --mode` (recorded before compacting)")
    add_policy_limits(compact)
    compact.add_argument("--policy-only", action="store_true",
                         help="record the merge-policy flags without compacting")

    policy = add_command(subparsers, "merge-policy", run_merge_policy,
                         help="show or set when updates merge segments (dense and BM25)",
                         description="The merge policy recorded in the index's manifest: after an update, a merge is\n"
                                     "due when there are more than --max-segments segments or more than\n"
                                     "--max-deleted-fraction of the indexed rows are deleted (index-wide). A dense\n"
                                     "index merges the segments chosen; a BM25 index compacts whole. Without\n"
                                     "options it prints the policy (docs/index-updates.md, docs/bm25-updates.md).",
                         examples=POLICY_EXAMPLES)
    policy.add_argument("index", help="index folder")
    policy.add_argument("--mode", choices=["auto", "never"],
                        help="never: updates never merge, only `embedkit index compact` does; auto: on again")
    add_policy_limits(policy)

    merge = add_command(subparsers, "merge", run_merge, help="join encode shards and/or indexes into one index",
                        description="Build one index from encode-shard folders (`embedkit encode --out`) and/or\n"
                                    "index folders, in the order given. All must use the same encoder.",
                        examples=MERGE_EXAMPLES)
    merge.add_argument("inputs", nargs="+", help="encode-shard folders and/or index folders")
    merge.add_argument("--out", required=True, help="index folder to write")
    merge.add_argument("--overwrite", action="store_true")
    merge.add_argument("--index-factory", help="FAISS factory (default: the first input index's, else Flat)")
    merge.add_argument("--metric", choices=["ip", "l2"], help="default: the first input index's, else ip")
    merge.add_argument("--train-sample", type=positive_int, default=100_000)
    merge.add_argument("--store-vectors", default="auto", choices=["auto", "float16", "float32", "none"],
                       help="keep a copy of the vectors in the folder (auto: float16 for lossy kinds)")
    merge.add_argument("--on-disk", action="store_true",
                       help="IVF only: inverted lists in index.ivfdata, read from disk (corpora larger than RAM)")

    tune = add_command(subparsers, "tune", run_tune,
                       help="compare index kinds on this index's vectors (recall, QPS, build time, size)",
                       description="Build Flat, HNSW32, IVF-Flat, IVF-PQ and SQ8 on the index's own vectors and\n"
                                   "report recall@k against exact search, queries/s, build time and size.",
                       examples=TUNE_EXAMPLES)
    tune.add_argument("index", help="index folder")
    tune.add_argument("--queries", help="queries file to encode with the index's encoder (default: sample documents)")
    tune.add_argument("--num-queries", type=positive_int, default=1000,
                      help="documents sampled as queries (default: 1000)")
    tune.add_argument("--k", type=positive_int, default=10)
    tune.add_argument("--kinds", help="comma-separated subset of Flat,HNSW32,IVF-Flat,IVF-PQ,SQ8")
    tune.add_argument("--output", "-o", help="also write the table (markdown) to this file")
    add_encoder_runtime_arguments(tune)


def run_add(args: argparse.Namespace) -> int:
    from embedkit.data.corpus import iter_documents
    from embedkit.index.kinds import kind_of

    kind = kind_of(args.index)
    report = kind.add(Path(args.index), iter_documents(args.corpus, field_map_from_args(args)), model=args.model,
                      device=args.device, batch_size=args.batch_size, source=str(args.corpus), quiet=args.quiet)
    print(f"{args.index}: {report.summary()}")
    return 0


def read_ids(path: str | Path) -> list[str]:
    from embedkit.errors import DataFormatError

    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"cannot read ids: {error}", path=path) from None


def run_remove(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError
    from embedkit.index.kinds import kind_of

    ids = list(args.id_list) + (read_ids(args.ids) if args.ids else [])
    if not ids:
        raise EmbedkitError("nothing to remove: give --ids FILE or --id ID")
    report = kind_of(args.index).remove(Path(args.index), ids, source=args.ids or "command line")
    print(f"{args.index}: {report.summary()}")
    if report.missing:
        print(f"not in the index: {', '.join(report.missing[:10])}{' …' if len(report.missing) > 10 else ''}")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError
    from embedkit.index.kinds import kind_of

    kind = kind_of(args.index)
    if args.index_factory and kind.name != "dense":
        raise EmbedkitError(f"--index-factory applies to dense indexes; {args.index} is a {kind.name} index")
    changes = policy_changes(args)
    if args.policy_only and changes is None:
        raise EmbedkitError("--policy-only records merge-policy flags: give --merge-policy, --max-segments or "
                            "--max-deleted-fraction")
    if changes is not None:
        record_merge_policy(args.index, *changes)
    if not args.policy_only:
        if kind.name == "dense":
            from embedkit.index.lifecycle import compact_index

            report = compact_index(args.index, factory=args.index_factory, train_sample=args.train_sample)
        else:
            report = kind.compact(Path(args.index))
        print(f"{args.index}: {report.summary()}")
    return 0


def add_policy_limits(parser: argparse.ArgumentParser) -> None:
    """The merge policy's limits (`embedkit.index.merge_policy`); `off` turns a rule off."""
    parser.add_argument("--max-segments", type=limit_or_off(positive_int), metavar="N|off",
                        help="merge policy: more segments than this after an update and a merge is due (default 10)")
    parser.add_argument("--max-deleted-fraction", type=limit_or_off(fraction), metavar="F|off",
                        help="merge policy: more than this share of the indexed rows deleted, index-wide, and a merge "
                             "is due (0: any deletion; default 0.25)")


#: The word that turns a merge-policy rule off (`--max-segments off`).
OFF = "off"


def limit_or_off(parse: Callable[[str], float]) -> Callable[[str], float | str]:
    """argparse type: `parse(text)`, or the word `off` (that rule turned off)."""
    def parse_limit(text: str) -> float | str:
        return OFF if text.strip().lower() == OFF else parse(text)

    parse_limit.__name__ = parse.__name__  # argparse names the type in its error message
    return parse_limit


def policy_changes(args: argparse.Namespace) -> tuple[Mode | None, dict[str, float | None]] | None:
    """The mode and limits the merge-policy flags give (a limit None: turned off); None when none is given."""
    limits: dict[str, float | None] = {name: None if value == OFF else value
                                       for name in ("max_segments", "max_deleted_fraction")
                                       if (value := getattr(args, name, None)) is not None}
    if args.mode is None and not limits:
        return None
    if args.mode == "never" and limits:
        from embedkit.errors import EmbedkitError

        flags = " and ".join("--" + name.replace("_", "-") for name in limits)
        raise EmbedkitError(f"merge policy never turns every rule off: it cannot go with {flags}")
    return args.mode, limits


def recorded_policy(index: str) -> tuple[str, MergePolicy]:
    """The kind of the index folder and the merge policy its manifest records (dense or BM25)."""
    from embedkit.errors import EmbedkitError
    from embedkit.index.manifest import BM25Manifest, DenseManifest, IndexManifest

    manifest = IndexManifest.load(index)
    if isinstance(manifest, DenseManifest):
        return "dense", manifest.merge_policy
    if isinstance(manifest, BM25Manifest):
        return "bm25", manifest.settings.merge
    raise EmbedkitError(f"{index} is a {manifest.kind} index: only dense and BM25 indexes have a merge policy")


def record_merge_policy(index: str, mode: Mode | None, limits: dict[str, float | None]) -> MergePolicy:
    """Change the merge policy of a dense or BM25 index (`MergePolicy.with_changes`) and print it."""
    from embedkit.errors import EmbedkitError

    kind, current = recorded_policy(index)
    try:
        policy = current.with_changes(mode, **limits)
    except ValueError as error:
        raise EmbedkitError(f"{index}: {error}") from None
    if kind == "dense":
        from embedkit.index.lifecycle import set_merge_policy

        set_merge_policy(index, policy)  # commits like an update: a merge now due runs at once
    else:
        from embedkit.lexical.update import set_merge_policy as set_bm25_policy

        set_bm25_policy(index, policy)  # the manifest only: the next update compacts when due
    print_policy(index, kind, policy)
    return policy


def print_policy(index: str, kind: str, policy: MergePolicy) -> None:
    # What "due" does differs by kind (the backends): say it, so the one policy reads right for either.
    action = ("" if policy.mode == "never" else " (dense: the segments due are merged)" if kind == "dense"
              else " (bm25: the whole index is compacted)")
    print(f"{index}: merge policy {policy.describe()}{action}")


def run_merge_policy(args: argparse.Namespace) -> int:
    changes = policy_changes(args)
    if changes is None:
        print_policy(args.index, *recorded_policy(args.index))
    else:
        record_merge_policy(args.index, *changes)
    return 0


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def run_merge(args: argparse.Namespace) -> int:
    from embedkit.index.lifecycle import merge_indexes
    from embedkit.index.manifest import DenseManifest

    merge_indexes(args.inputs, args.out, factory=args.index_factory, metric=args.metric,
                  train_sample=args.train_sample, overwrite=args.overwrite, store_vectors=args.store_vectors,
                  on_disk=args.on_disk)
    manifest = DenseManifest.load(args.out)
    print(f"wrote {args.out}: {manifest.num_docs} documents, {manifest.index_factory}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from embedkit.index.tune import default_candidates, format_table, tune_index
    from embedkit.io import atomic_write

    queries = None
    if args.queries:
        from embedkit.data.queries import load_queries
        from embedkit.index.lifecycle import encoder_for

        encoder = encoder_for(args.index, model=args.model, device=args.device, batch_size=args.batch_size)
        queries = encoder.encode_queries(list(load_queries(args.queries).values()))
    candidates = None
    if args.kinds:
        from embedkit.index.manifest import DenseManifest

        manifest = DenseManifest.load(args.index)  # the manifest alone: no model or FAISS index to load
        wanted = set(args.kinds.split(","))
        available = default_candidates(manifest.num_docs, manifest.encoder.dim)
        missing = wanted - {c.name for c in available}
        if missing:
            from embedkit.errors import EmbedkitError

            raise EmbedkitError(f"--kinds {','.join(sorted(missing))}: not a kind tune can build for "
                                f"{manifest.num_docs} documents (choose from {', '.join(c.name for c in available)})")
        candidates = [c for c in available if c.name in wanted]
    results = tune_index(args.index, queries=queries, num_queries=args.num_queries, candidates=candidates, k=args.k)
    table = format_table(results, k=args.k)
    print(table)
    if args.output:
        with atomic_write(args.output) as handle:
            handle.write(table + "\n")
    return 0
