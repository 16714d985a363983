"""`embedkit search`: query an index from the command line; print a table or write a run file."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli._common import add_command, add_quiet_argument, print_hits

EXAMPLES = """\
  embedkit search indexes/scifact "statins reduce cardiovascular risk"
  embedkit search indexes/scifact --queries ../shared/data/scifact/queries.jsonl --k 100 --output runs/scifact.trec
  embedkit search indexes/scifact --queries queries.tsv --output runs/scifact.jsonl      # with texts
  embedkit search indexes/ivfpq "a query" --nprobe 64
  embedkit search indexes/hnsw "a query" --ef-search 256
  embedkit search indexes/scifact "a query" --backend torch      # exact search with torch (fp16 on GPU)
"""

SEARCH_OPTION_HOOKS: list[str] = [
    # modules exposing `add_search_arguments(parser)` and `search_from_args(args) -> int | None`;
    # a hook returning None leaves the search to this module (used by hybrid search).
    "embedkit.hybrid.cli_search",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "search",
        run_search,
        help="search an index with a query or a queries file",
        description=(
            "Search an index. Queries are encoded with the model, prefixes and normalization recorded in\n"
            "the index manifest, so they always match how the documents were encoded."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("index", nargs="?", help="index folder (see `embedkit index build`)")
    parser.add_argument("query", nargs="?", help="a single query; or use --queries")
    parser.add_argument("--queries", help="BEIR queries.jsonl or tsv (id<TAB>text)")
    parser.add_argument("--output", "-o", help="write a run: .trec (6-column TREC) or .jsonl (with texts)")
    parser.add_argument("--k", "-k", type=int, default=10, help="hits per query (default: 10)")
    parser.add_argument("--nprobe", type=int, help="IVF lists to visit (more: slower, more accurate)")
    parser.add_argument("--ef-search", type=int, help="HNSW search breadth (more: slower, more accurate)")
    parser.add_argument("--model", help="local copy of the index's model (must have the same weights)")
    parser.add_argument("--query-prefix", help="refused unless it equals the prefix recorded in the manifest")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--backend", choices=["faiss", "faiss-gpu", "torch"],
                        help="dense search backend: faiss (default), faiss-gpu, or exact search on torch")
    parser.add_argument("--mmap", action="store_true", help="memory-map the FAISS index instead of reading it into RAM")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tag", default="embedkit", help="run tag, the 6th TREC column")
    for module_name in SEARCH_OPTION_HOOKS:
        try:
            module = __import__(module_name, fromlist=["add_search_arguments"])
        except ModuleNotFoundError:
            continue
        module.add_search_arguments(parser)
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
    for module_name in SEARCH_OPTION_HOOKS:
        try:
            module = __import__(module_name, fromlist=["search_from_args"])
        except ModuleNotFoundError:
            continue
        status = module.search_from_args(args)
        if status is not None:
            return status
    from embedkit.errors import EmbedkitError, ModelMismatchError
    from embedkit.index.base import Index

    if not args.index:
        raise EmbedkitError("give an index folder to search")
    queries = load_query_set(args)
    index = Index.load(args.index, **_open_options(args))
    spec = getattr(index, "spec", None)
    if args.query_prefix is not None and spec is not None and args.query_prefix != spec.query_prefix:
        raise ModelMismatchError(
            f"--query-prefix {args.query_prefix!r} differs from the prefix the index was built with "
            f"({spec.query_prefix!r}); queries must be encoded like the documents"
        )
    params = {key: value for key, value in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if value is not None}
    ids, texts = list(queries), list(queries.values())
    results = {}
    for start in range(0, len(ids), 256):
        for query_id, text, hits in zip(ids[start:start + 256], texts[start:start + 256],
                                        index.search(texts[start:start + 256], args.k, **params), strict=True):
            results[query_id] = (text, hits)
    write_results(results, args)
    return 0


def _open_options(args: argparse.Namespace) -> dict:
    options = {"device": args.device, "batch_size": args.batch_size}
    if args.model:
        options["model"] = args.model
    if args.backend:
        options["backend"] = args.backend
    if args.mmap:
        options["mmap"] = True
    return options


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
