"""`embedkit search`: query an index (or two, fused) from the command line; print a table or write a run file."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli._common import (
    add_command,
    add_encoder_runtime_arguments,
    add_quiet_argument,
    positive_int,
    print_hits,
    run_tag,
)
from embedkit.cli.fuse import add_fusion_arguments, fusion_config_from_args

EXAMPLES = """\
  embedkit search indexes/scifact "statins reduce cardiovascular risk"
  embedkit search indexes/scifact --queries ../shared/data/scifact/queries.jsonl --k 100 --output runs/scifact.trec
  embedkit search indexes/scifact --queries queries.tsv --output runs/scifact.jsonl      # with texts
  embedkit search indexes/ivfpq "a query" --nprobe 64
  embedkit search indexes/hnsw "a query" --ef-search 256
  embedkit search indexes/scifact "a query" --backend torch      # exact search with torch (fp16 on GPU)
  embedkit search --hybrid indexes/scifact indexes/scifact-bm25 "statins and heart disease"
  embedkit search --hybrid indexes/d indexes/b --fusion interpolate --alpha 0.6 --queries q.jsonl -o hybrid.trec
"""
QUERY_BATCH = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "search",
        run_search,
        help="search an index with a query or a queries file",
        description=(
            "Search an index of any kind (dense or BM25), or two fused with --hybrid. Dense queries are encoded\n"
            "with the model, prefixes and normalization recorded in the index manifest, so they always match\n"
            "how the documents were encoded."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("index", nargs="?", help="index folder (see `embedkit index build`)")
    parser.add_argument("query", nargs="?", help="a single query; or use --queries")
    parser.add_argument("--queries", help="BEIR queries.jsonl or tsv (id<TAB>text)")
    parser.add_argument("--output", "-o", help="write a run: .trec (6-column TREC) or .jsonl (with texts)")
    parser.add_argument("--k", "-k", type=positive_int, default=10, help="hits per query (default: 10)")
    parser.add_argument("--tag", type=run_tag, default="embedkit", help="run tag, the 6th TREC column (one word)")
    dense = parser.add_argument_group("dense indexes")
    dense.add_argument("--nprobe", type=positive_int, help="IVF lists to visit (more: slower, more accurate)")
    dense.add_argument("--ef-search", type=positive_int, help="HNSW search breadth (more: slower, more accurate)")
    dense.add_argument("--query-prefix", help="refused unless it equals the prefix recorded in the manifest")
    dense.add_argument("--backend", choices=["faiss", "faiss-gpu", "torch"],
                       help="dense search backend: faiss (default), faiss-gpu, or exact search on torch")
    dense.add_argument("--mmap", action="store_true",
                       help="memory-map the FAISS index instead of reading it into RAM")
    dense.add_argument("--encoder-backend", choices=["torch", "onnx"],
                       help="what runs the query encoder: torch (default), or onnx (ONNX Runtime on the CPU, "
                            "exported once into the cache; same vectors)")
    add_encoder_runtime_arguments(parser, title="query encoder (settings come from the index manifest)")
    hybrid = parser.add_argument_group("hybrid search")
    hybrid.add_argument("--hybrid", nargs=2, metavar=("DENSE", "BM25"),
                        help="search two indexes (any kinds) and fuse their rankings; the positional index is "
                             "then omitted: embedkit search --hybrid DENSE BM25 'query'. Dense-only options "
                             "apply to the first")
    add_fusion_arguments(hybrid)
    hybrid.add_argument("--fusion-depth", type=positive_int, default=100,
                        help="hits taken from each index before fusing (at least --k; default: 100)")
    add_quiet_argument(parser)


def load_query_set(args: argparse.Namespace) -> dict[str, str]:
    from embedkit.data.queries import load_queries
    from embedkit.errors import EmbedkitError

    if args.queries and args.query:
        raise EmbedkitError("give either a query or --queries, not both")
    if args.queries:
        return load_queries(args.queries)
    if args.query:
        return {"q1": args.query}
    raise EmbedkitError("nothing to search: give a query or --queries FILE")


def run_search(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError, ModelMismatchError
    from embedkit.index.base import Index

    _check_output(args)
    if args.hybrid:
        return _run_hybrid(args)
    if not args.index:
        raise EmbedkitError("give an index folder to search")
    queries = load_query_set(args)
    _check_query_ids(queries, args)
    index = Index.load(args.index, **_open_options(args, dense=True))
    spec = getattr(index, "spec", None)
    if args.query_prefix is not None and spec is not None and args.query_prefix != spec.query_prefix:
        raise ModelMismatchError(
            f"--query-prefix {args.query_prefix!r} differs from the prefix the index was built with "
            f"({spec.query_prefix!r}); queries must be encoded like the documents"
        )
    params = _search_params(args)
    index.check_search_options(params)
    params = {key: value for key, value in params.items() if value is not None}
    ids, texts = list(queries), list(queries.values())
    results = {}
    for start in range(0, len(ids), QUERY_BATCH):
        chunk = texts[start:start + QUERY_BATCH]
        for query_id, text, hits in zip(ids[start:start + QUERY_BATCH], chunk, index.search(chunk, args.k, **params),
                                        strict=True):
            results[query_id] = (text, hits)
    write_results(results, args)
    return 0


def _run_hybrid(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError
    from embedkit.hybrid.searcher import HybridSearcher
    from embedkit.index.base import Index

    if args.index is not None:
        # With --hybrid there is no positional index, so argparse put the query in the index slot.
        if args.query is not None:
            raise EmbedkitError("with --hybrid give the two indexes after --hybrid and only a query (or --queries)")
        args.query, args.index = args.index, None
    queries = load_query_set(args)
    _check_query_ids(queries, args)
    indexes, params = [], []
    for position, path in enumerate(args.hybrid):
        index = Index.load(path, **_open_options(args, dense=position == 0))
        wanted = _search_params(args) if position == 0 else {}
        index.check_search_options(wanted)
        indexes.append(index)
        params.append({key: value for key, value in wanted.items() if value is not None})
    searcher = HybridSearcher(indexes, fusion_config_from_args(args, depth=max(args.fusion_depth, args.k)), params)
    ids, texts = list(queries), list(queries.values())
    results = {}
    for start in range(0, len(ids), QUERY_BATCH):
        chunk = texts[start:start + QUERY_BATCH]
        for query_id, text, hits in zip(ids[start:start + QUERY_BATCH], chunk, searcher.search(chunk, args.k),
                                        strict=True):
            results[query_id] = (text, hits)
    write_results(results, args)
    return 0


def _search_params(args: argparse.Namespace) -> dict:
    return {"nprobe": args.nprobe, "ef_search": args.ef_search}


def _open_options(args: argparse.Namespace, *, dense: bool) -> dict:
    """Options for `Index.load`: the encoder runtime for every kind; dense-only ones only where given."""
    options: dict = {"device": args.device, "batch_size": args.batch_size}
    if dense:
        if args.model:
            options["model"] = args.model
        if args.backend:
            options["backend"] = args.backend
        if args.mmap:
            options["mmap"] = True
        if args.encoder_backend:
            options["encoder_backend"] = args.encoder_backend
    return options


def _check_output(args: argparse.Namespace) -> None:
    from embedkit.errors import EmbedkitError

    if args.output and Path(args.output).is_dir():
        raise EmbedkitError(f"--output {args.output} is a folder; give a run file name such as "
                            f"{Path(args.output) / 'run.trec'}")


def _check_query_ids(queries: dict[str, str], args: argparse.Namespace) -> None:
    """A TREC run cannot hold a query id with whitespace: refuse before searching, not after."""
    from embedkit.errors import DataFormatError

    if not args.output or Path(args.output).suffix == ".jsonl":
        return
    for query_id in queries:
        if not query_id or any(ch.isspace() for ch in query_id):
            raise DataFormatError(f"query id {query_id!r} is empty or contains whitespace, which a TREC run file "
                                  "cannot hold (columns are whitespace-separated); fix the id or write .jsonl",
                                  path=args.queries)


def write_results(results: dict, args: argparse.Namespace) -> None:
    """Print a table per query, or write the run file named by --output (.trec or .jsonl)."""
    from embedkit.data.runs import write_jsonl_run, write_trec_run

    if not args.output:
        for text, hits in results.values():
            print_hits(text, hits)
        return
    output = Path(args.output)
    if output.suffix == ".jsonl":
        write_jsonl_run({
            query_id: {"query": text, "hits": [{"id": h.id, "score": h.score, "rank": h.rank, "title": h.title,
                                                "text": h.text} for h in hits]}
            for query_id, (text, hits) in results.items()
        }, output)
    else:
        write_trec_run({query_id: {h.id: h.score for h in hits} for query_id, (_, hits) in results.items()},
                       output, tag=args.tag)
    if not args.quiet:
        print(f"wrote {output}: {len(results)} queries")
