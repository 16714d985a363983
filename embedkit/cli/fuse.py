"""`embedkit fuse`: fuse TREC run files with reciprocal rank fusion or normalized score interpolation."""

from __future__ import annotations

import argparse

from embedkit.cli._common import add_command, add_quiet_argument, positive_int, run_tag

EXAMPLES = """\
  embedkit fuse runs/dense.trec runs/bm25.trec -o runs/hybrid.trec                 # RRF, k=60
  embedkit fuse runs/dense.trec runs/bm25.trec --fusion interpolate --alpha 0.6 -o runs/hybrid.trec
  embedkit fuse a.trec b.trec c.trec --weights 1 1 0.5 --k 100 -o fused.trec
  embedkit eval --run runs/hybrid.trec --qrels ../shared/data/scifact/qrels/test.tsv
"""


def add_fusion_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--fusion/--rrf-k/--alpha/--normalization, shared by `search --hybrid` and `fuse`."""
    from embedkit.hybrid.fusion import FUSION_METHODS

    parser.add_argument("--fusion", "--method", dest="fusion", default="rrf", choices=sorted(FUSION_METHODS),
                        help="rrf: reciprocal rank fusion; interpolate: weighted sum of normalized scores "
                             "(default: rrf)")
    parser.add_argument("--rrf-k", type=float, default=60.0, help="RRF constant k in 1/(k + rank) (default: 60)")
    parser.add_argument("--alpha", type=float,
                        help="weight of the first system, 1-alpha for the second (default: equal weights)")
    parser.add_argument("--normalization", default="minmax", choices=["minmax", "zscore"],
                        help="score normalization for --fusion interpolate (default: minmax)")


def fusion_config_from_args(args: argparse.Namespace, *, depth: int, weights: list[float] | None = None):
    """The `FusionConfig` described by the options of `add_fusion_arguments`."""
    from pydantic import ValidationError

    from embedkit.errors import EmbedkitError
    from embedkit.hybrid.fusion import FusionConfig

    try:
        return FusionConfig(method=args.fusion, rrf_k=args.rrf_k, alpha=args.alpha, normalization=args.normalization,
                            weights=tuple(weights) if weights else None, depth=depth)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'fusion'}: {e['msg']}" for e in error.errors())
        raise EmbedkitError(f"bad fusion settings: {problems}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "fuse",
        fuse,
        help="fuse run files (RRF or score interpolation)",
        description=(
            "Fuse two or more TREC runs into one. RRF scores each document by sum(w / (k + rank)); interpolation\n"
            "normalizes each run's scores per query (min-max or z-score) and sums them with weights."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("runs", nargs="+", help="TREC run files (qid Q0 docid rank score tag)")
    parser.add_argument("--output", "-o", required=True, help="fused TREC run to write")
    add_fusion_arguments(parser)
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per run (instead of --alpha)")
    parser.add_argument("--depth", type=positive_int, default=1000,
                        help="hits per run that enter fusion (default: 1000)")
    parser.add_argument("--k", "-k", type=positive_int, default=1000, help="hits per query to write (default: 1000)")
    parser.add_argument("--tag", type=run_tag, default="fused", help="run tag, the 6th TREC column (default: fused)")
    add_quiet_argument(parser)


def fuse(args: argparse.Namespace) -> int:
    from embedkit.data.runs import read_run, write_trec_run
    from embedkit.errors import EmbedkitError
    from embedkit.hybrid.fusion import fuse_runs

    if len(args.runs) < 2:
        raise EmbedkitError("give at least two run files to fuse")
    if args.weights and args.alpha is not None:
        raise EmbedkitError("give either --alpha or --weights, not both")
    config = fusion_config_from_args(args, depth=args.depth, weights=args.weights)
    runs = [read_run(path) for path in args.runs]
    fused = fuse_runs(runs, config, k=args.k)
    write_trec_run(fused, args.output, tag=args.tag)
    if not args.quiet:
        print(f"wrote {args.output}: {len(fused)} queries fused from {len(runs)} runs ({config.method})")
    return 0
