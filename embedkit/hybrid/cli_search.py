"""`embedkit search --hybrid DENSE BM25`: fuse two live indexes (hooked into `embedkit search`).

    embedkit search --hybrid indexes/scifact indexes/scifact-bm25 "statins and heart disease"
    embedkit search --hybrid indexes/scifact indexes/scifact-bm25 --queries queries.jsonl -k 1000 -o hybrid.trec
    embedkit search --hybrid indexes/d indexes/b --fusion interpolate --alpha 0.6 --normalization zscore "q"
"""

from __future__ import annotations

import argparse

from embedkit.hybrid.fusion import FUSION_METHODS


def add_fusion_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--fusion/--rrf-k/--alpha/--normalization, shared by `search --hybrid` and `fuse`."""
    parser.add_argument("--fusion", "--method", dest="fusion", default="rrf", choices=sorted(FUSION_METHODS),
                        help="rrf: reciprocal rank fusion; interpolate: weighted sum of normalized scores (default: rrf)")
    parser.add_argument("--rrf-k", type=float, default=60.0, help="RRF constant k in 1/(k + rank) (default: 60)")
    parser.add_argument("--alpha", type=float,
                        help="weight of the first system, 1-alpha for the second (default: equal weights)")
    parser.add_argument("--normalization", default="minmax", choices=["minmax", "zscore"],
                        help="score normalization for --fusion interpolate (default: minmax)")


def fusion_config_from_args(args: argparse.Namespace, *, depth: int, weights: list[float] | None = None):
    from pydantic import ValidationError

    from embedkit.errors import EmbedkitError
    from embedkit.hybrid.fusion import FusionConfig

    try:
        return FusionConfig(method=args.fusion, rrf_k=args.rrf_k, alpha=args.alpha, normalization=args.normalization,
                            weights=tuple(weights) if weights else None, depth=depth)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'fusion'}: {e['msg']}" for e in error.errors())
        raise EmbedkitError(f"bad fusion settings: {problems}") from None


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hybrid search")
    group.add_argument("--hybrid", nargs=2, metavar=("DENSE", "BM25"),
                       help="search two indexes (any kinds) and fuse their rankings; the positional index is "
                            "then omitted: embedkit search --hybrid DENSE BM25 'query'")
    add_fusion_arguments(group)
    group.add_argument("--fusion-depth", type=int, default=100,
                       help="hits taken from each index before fusing (at least --k; default: 100)")


def search_from_args(args: argparse.Namespace) -> int | None:
    """Run a hybrid search when --hybrid is given; None lets `embedkit search` handle the command."""
    if not getattr(args, "hybrid", None):
        return None
    from embedkit.cli.search import load_query_set, write_results
    from embedkit.errors import EmbedkitError
    from embedkit.hybrid.searcher import HybridSearcher

    if args.index is not None:
        # With --hybrid there is no positional index, so argparse put the query in the index slot.
        if args.query is not None:
            raise EmbedkitError("with --hybrid give the two indexes after --hybrid and only a query (or --queries)")
        args.query, args.index = args.index, None
    queries = load_query_set(args)
    indexes, params = [], []
    for path in args.hybrid:
        index, search_params = _open(path, args)
        indexes.append(index)
        params.append(search_params)
    searcher = HybridSearcher(indexes, fusion_config_from_args(args, depth=max(args.fusion_depth, args.k)), params)
    ids, texts = list(queries), list(queries.values())
    results = {}
    for start in range(0, len(ids), 256):
        chunk = texts[start:start + 256]
        for query_id, text, hits in zip(ids[start:start + 256], chunk, searcher.search(chunk, args.k), strict=True):
            results[query_id] = (text, hits)
    write_results(results, args)
    return 0


def _open(path: str, args: argparse.Namespace):
    """Open an index; encoder and FAISS options apply to dense indexes only."""
    from embedkit.index.base import Index
    from embedkit.index.manifest import IndexManifest

    if IndexManifest.load(path).kind != "dense":
        return Index.load(path), {}
    from embedkit.cli.search import _open_options

    params = {key: value for key, value in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if value is not None}
    return Index.load(path, **_open_options(args)), params
