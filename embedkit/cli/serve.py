"""`embedkit serve`: a retrieval server (FastAPI/uvicorn) speaking Search-R1's `/retrieve` protocol."""

from __future__ import annotations

import argparse

from embedkit.cli._common import add_command

EXAMPLES = """\
  embedkit serve indexes/wiki                                  # http://127.0.0.1:8000/retrieve, docs at /docs
  embedkit serve indexes/wiki --bm25 indexes/wiki-bm25 --retrieve-mode hybrid --port 8001
  embedkit serve indexes/wiki-bm25                             # a BM25 index alone (no model loaded)
  EMBEDKIT_API_KEY=secret embedkit serve indexes/wiki --host 0.0.0.0
  embedkit serve --config configs/serve.yaml --set limits.max_topk=50 --set batching.max_batch_size=512
  embedkit serve indexes/wiki-e5-flat --backend faiss-gpu          # float16, sharded over the visible GPUs
  embedkit serve indexes/wiki-e5-flat --mmap                        # memory-map index.faiss instead of reading it
  embedkit serve indexes/wiki --encoder-backend onnx               # CPU: queries encoded by ONNX Runtime (~2x)
  curl -s localhost:8000/retrieve -H 'content-type: application/json' \\
       -d '{"queries": ["who wrote Hamlet?"], "topk": 3, "return_scores": true}'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "serve",
        serve,
        help="serve indexes over HTTP (Search-R1 /retrieve, /search, /health, /info)",
        description=(
            "Serve a dense and/or a BM25 index over HTTP. POST /retrieve is wire-compatible with Search-R1's\n"
            "retrieval server, so agent training loops (Search-R1, verl's search tool) can use it unchanged.\n"
            "Concurrent requests are micro-batched into one encoder call, and a request of any size (Search-R1\n"
            "sends 2,560 queries at once) is split into encoder batches. When `embedkit index add/remove` commits\n"
            "an update, the server loads the new state in the background (a dense index reads only the segments\n"
            "and deletion files that changed) and switches between requests.\n"
            "Binds 127.0.0.1 unless --host says otherwise; set --api-key or $EMBEDKIT_API_KEY to require\n"
            "'Authorization: Bearer <key>'."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("index", nargs="?", help="main index folder (dense or bm25)")
    # The config key is `index` and the second folder is `--bm25`, so `--index FOLDER` is what users type too.
    parser.add_argument("--index", dest="index_option", metavar="INDEX", help="the main index folder, as an option")
    parser.add_argument("--bm25", help="BM25 index folder for bm25 and hybrid modes (or, beside a BM25 main index, "
                        "the dense one)")
    parser.add_argument("--config", help="YAML file with ServerConfig settings (command-line options win)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override one setting of the config, dotted (limits.max_topk=50); repeatable")
    parser.add_argument("--host", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: 8000)")
    parser.add_argument("--api-key", help="require this bearer token (default: $EMBEDKIT_API_KEY, else no auth)")
    parser.add_argument("--retrieve-mode", choices=["dense", "bm25", "hybrid"],
                        help="what /retrieve searches (default: the main index's kind, dense or bm25, even with "
                             "the other kind beside it)")
    parser.add_argument("--default-topk", type=int, help="topk when a /retrieve request omits it (default: 3)")
    group = parser.add_argument_group("limits")
    group.add_argument("--max-topk", type=int, help="largest topk/k accepted (default: 100)")
    group.add_argument("--max-queries", type=int,
                       help="queries per request (default: 100,000; larger requests are split into encoder batches)")
    group.add_argument("--max-query-length", type=int, help="characters per query (default: 4096)")
    group = parser.add_argument_group("micro-batching")
    group.add_argument("--max-batch-size", type=int, help="queries per search call (default: 256)")
    group.add_argument("--max-wait-ms", type=float,
                       help="extra wait for more requests before a call (default: 0; requests queue up anyway "
                            "while the previous call runs)")
    group.add_argument("--no-batching", action="store_true", help="one encoder call per request")
    group.add_argument("--no-reload", action="store_true",
                       help="keep serving the folder as it was at start even if `embedkit index add` updates it "
                            "(a reload holds the old and the new index in memory for a moment: use this when two "
                            "copies do not fit, e.g. a GPU-resident 21M-passage index)")
    group = parser.add_argument_group("hybrid")
    group.add_argument("--fusion", help="default fusion of hybrid mode: a registered fusion method (default: rrf)")
    group.add_argument("--alpha", type=float, help="weight of the dense ranking for interpolation")
    group.add_argument("--hybrid-depth", type=int, help="hits per index entering fusion (default: 100)")
    parser.add_argument("--backend", choices=["faiss", "faiss-gpu", "torch"],
                        help="dense search: faiss (CPU, default), faiss-gpu (float16, sharded over the visible GPUs; "
                             "needs faiss-gpu), torch (exact matrix products, fp16 on GPU)")
    parser.add_argument("--mmap", action="store_true", default=None,
                        help="memory-map index.faiss instead of reading it into RAM")
    parser.add_argument("--device", help="encoder device: auto, cpu, cuda, mps")
    parser.add_argument("--encoder-backend", choices=["torch", "onnx"],
                        help="what runs the query encoder: torch (default), or onnx: ONNX Runtime on the CPU, "
                             "exported once into the cache (same vectors; ~2x faster one query at a time)")
    parser.add_argument("--search-streams", type=int,
                        help="dense searches running at once, one thread each (default: min(4, CPUs) on CPU, 1 on GPU)")
    parser.add_argument("--torch-threads", type=int,
                        help="torch threads per search stream (default: CPUs / streams; torch's own with one stream)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def config_from_args(args: argparse.Namespace):
    """YAML config (if any), then `--set KEY=VALUE`, then the dedicated flags; validated as a ServerConfig."""
    from embedkit.config import parse_set_overrides, validate_config
    from embedkit.errors import EmbedkitError
    from embedkit.server.config import ServerConfig

    if args.index_option is not None:
        if args.index is not None and args.index != args.index_option:
            raise EmbedkitError(f"two main indexes given ({args.index} and --index {args.index_option}); give one "
                                "(a BM25 index to serve beside a dense one goes to --bm25)")
        args.index = args.index_option
    flags: dict = {}
    for name, key in (("index", "index"), ("bm25", "bm25"), ("host", "host"), ("port", "port"),
                      ("api_key", "api_key"), ("retrieve_mode", "retrieve_mode"), ("default_topk", "default_topk"),
                      ("hybrid_depth", "hybrid_depth"), ("device", "device"), ("torch_threads", "torch_threads"),
                      ("encoder_backend", "encoder_backend"),
                      ("search_streams", "search_streams"), ("backend", "backend"), ("mmap", "mmap"),
                      ("max_topk", "limits.max_topk"), ("max_queries", "limits.max_queries"),
                      ("max_query_length", "limits.max_query_chars"),
                      ("max_batch_size", "batching.max_batch_size"), ("max_wait_ms", "batching.max_wait_ms"),
                      ("fusion", "fusion.method"), ("alpha", "fusion.alpha")):
        value = getattr(args, name, None)
        if value is not None:
            flags[key] = value
    if args.no_batching:
        flags["batching.enabled"] = False
    if args.no_reload:
        flags["reload.enabled"] = False
    overrides = {**parse_set_overrides(args.overrides), **flags}
    if args.config:
        config = ServerConfig.from_yaml(args.config, overrides=overrides)
    else:
        from embedkit.config import apply_overrides

        config = validate_config(ServerConfig, apply_overrides({}, overrides))
    if config.index is None and config.bm25 is None:
        raise EmbedkitError("nothing to serve: give an index folder (and/or --bm25 FOLDER)")
    return config


def serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from embedkit.server.app import create_app

    config = config_from_args(args)
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.resolved_api_key() is None:
        logging.getLogger("embedkit.serve").warning(
            "serving on %s without an API key: anyone who can reach this port can query the index "
            "(set --api-key or $EMBEDKIT_API_KEY)", config.host)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0
