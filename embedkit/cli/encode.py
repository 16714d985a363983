"""`embedkit encode`: checkpointed, sharded corpus encoding (one process, many processes, or a Ray cluster)."""

from __future__ import annotations

import argparse

from embedkit.cli._common import (
    add_command,
    add_corpus_arguments,
    add_encoder_arguments,
    add_quiet_argument,
    encoder_config_from_args,
    field_map_from_args,
    positive_int,
)

EXAMPLES = """\
  embedkit encode --corpus ../shared/data/scifact/corpus.jsonl --out shards/scifact
  embedkit index merge shards/scifact --out indexes/scifact              # build the index from the shards
  # four workers (processes or machines sharing the folder), then one merge:
  embedkit encode --corpus corpus.jsonl --out /shared/shards --shard-id 0 --num-shards 4
  embedkit encode --corpus corpus.jsonl --out shards/ --store-dtype float16 --index indexes/big
  embedkit encode --corpus corpus.jsonl --out /shared/shards --ray --ray-address auto --index indexes/big
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "encode",
        run_encode,
        help="encode a corpus into checkpointed embedding shards",
        description=(
            "Encode a corpus into parts of --part-size documents, each written atomically and recorded in a\n"
            "checkpoint with the size and SHA-256 of its files. A killed job restarted with the same arguments\n"
            "resumes where it stopped and produces the same vectors; it re-encodes any part whose files changed\n"
            "since, and `embedkit index merge` refuses such a part, naming the file.\n"
            "--shard-id/--num-shards split the parts across processes or machines; --ray\n"
            "runs the shards as a Ray Data pipeline (one model replica per worker). `embedkit index merge`\n"
            "(or --index here) builds the index from the shards."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("--out", required=True, help="shard folder (shared storage when several machines write)")
    add_corpus_arguments(parser)
    add_encoder_arguments(parser, model_default=None)
    group = parser.add_argument_group("sharding")
    group.add_argument("--shard-id", type=int, default=0, help="which shard this process encodes (default 0)")
    group.add_argument("--num-shards", type=positive_int, default=None, help="how many shards in total (default 1; with --ray: workers)")
    group.add_argument("--part-size", type=positive_int, default=8192, help="documents per checkpointed part (default 8192)")
    group.add_argument("--store-dtype", default="float32", choices=["float32", "float16"],
                       help="precision of the stored embeddings (float16 halves disk)")
    group.add_argument("--devices", help="comma-separated CUDA devices to encode with (default: all visible GPUs)")
    ray = parser.add_argument_group("Ray")
    ray.add_argument("--ray", action="store_true", help="run all shards as a Ray Data pipeline")
    ray.add_argument("--ray-address", help="Ray cluster address (default: start a local instance)")
    ray.add_argument("--ray-workers", type=positive_int, default=2, help="model replicas (actors) (default 2)")
    ray.add_argument("--ray-gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    build = parser.add_argument_group("index (after encoding)")
    build.add_argument("--index", help="build this index folder from the shards when all of them are finished")
    build.add_argument("--index-factory", default="Flat")
    build.add_argument("--metric", default="ip", choices=["ip", "l2"])
    build.add_argument("--overwrite", action="store_true", help="replace an existing --index folder")
    add_quiet_argument(parser)


def run_encode(args: argparse.Namespace) -> int:
    from embedkit.encoding.shards import open_shards

    config = encoder_config_from_args(args)
    fields = field_map_from_args(args)
    devices = args.devices.split(",") if args.devices else None
    if args.ray:
        from embedkit.encoding.ray_encode import encode_with_ray

        num_shards = args.num_shards or args.ray_workers
        encode_with_ray(args.corpus, args.out, config, fields=fields, address=args.ray_address,
                        workers=args.ray_workers, num_shards=num_shards, part_size=args.part_size,
                        dtype=args.store_dtype, gpus_per_worker=args.ray_gpus_per_worker)
    else:
        from embedkit.encoding.encoder import Encoder
        from embedkit.encoding.shards import encode_shards

        checkpoint = encode_shards(args.corpus, args.out, Encoder(config), fields=fields, shard_id=args.shard_id,
                                   num_shards=args.num_shards or 1, part_size=args.part_size, dtype=args.store_dtype,
                                   devices=devices, quiet=args.quiet)
        print(f"{args.out}: shard {args.shard_id} of {args.num_shards or 1} finished, {checkpoint.documents} documents")
    if args.index:
        from embedkit.index.lifecycle import merge_indexes

        shards = open_shards(args.out)  # refuses while other shards are unfinished
        merge_indexes([args.out], args.index, factory=args.index_factory, metric=args.metric, overwrite=args.overwrite)
        print(f"wrote {args.index}: {shards.num_docs} documents, {args.index_factory}")
    return 0
