"""`embedkit index build --kind bm25`: the BM25-specific options and the build itself.

    embedkit index build --kind bm25 --corpus ../shared/data/scifact/corpus.jsonl --out indexes/scifact-bm25
    embedkit index build --kind bm25 --backend bm25s --k1 1.2 --b 0.75 --corpus corpus.jsonl --out indexes/b
    embedkit index build --kind bm25 --fields contents=1.0 title=1.0 --corpus corpus.jsonl --out indexes/mf
"""

from __future__ import annotations

import argparse

from embedkit.lexical.backends import BACKENDS


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `--kind bm25` (the shared --corpus/--out/--overwrite options come from index build)."""
    group = parser.add_argument_group("BM25 (--kind bm25)")
    group.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                       help="pyserini (Lucene, needs Java 21+) or bm25s (embedded, no JVM); "
                            "auto: pyserini when Java 21+ is found, else bm25s")
    group.add_argument("--k1", type=float, default=0.9, help="BM25 term-frequency saturation (default: 0.9)")
    group.add_argument("--b", type=float, default=0.4, help="BM25 length normalization, 0..1 (default: 0.4)")
    group.add_argument("--fields", nargs="+", metavar="FIELD=WEIGHT",
                       help="index the title as its own field and weigh both at search time, e.g. "
                            "'contents=1.0 title=1.0' (pyserini only; default: title and text as one field)")
    group.add_argument("--threads", type=int, default=1, help="indexing/search threads for pyserini (default: 1)")
    group.add_argument("--language", default="english", help="analyzer language (default: english)")


def build_from_args(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from embedkit.cli._common import field_map_from_args
    from embedkit.data.corpus import iter_documents
    from embedkit.errors import EmbedkitError
    from embedkit.index.manifest import IndexManifest
    from embedkit.lexical.backends import resolve_backend
    from embedkit.lexical.index import build_bm25_index
    from embedkit.lexical.settings import BM25Settings, parse_fields

    if getattr(args, "model", None):
        raise EmbedkitError("--model does not apply to --kind bm25 (BM25 has no encoder)")
    fields = parse_fields(args.fields)
    backend = resolve_backend(args.backend)
    if args.backend == "auto" and backend == "bm25s" and fields and "title" in fields:
        raise EmbedkitError("--fields with a separate title needs the pyserini backend, which needs Java 21+; "
                            "no Java 21+ was found (see `embedkit.lexical.java`), or drop --fields")
    try:
        settings = BM25Settings(backend=backend, k1=args.k1, b=args.b, fields=fields, threads=args.threads,
                                language=args.language)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise EmbedkitError(f"bad BM25 settings: {problems}") from None
    out = build_bm25_index(iter_documents(args.corpus, field_map_from_args(args)), args.out, settings,
                           overwrite=args.overwrite, corpus=str(args.corpus))
    manifest = IndexManifest.load(out)
    layout = "title and text as separate fields" if settings.multifield else "title and text as one field"
    print(f"wrote {out}: {manifest.num_docs} documents, BM25 ({backend}, k1={settings.k1}, b={settings.b}, {layout})")
    return 0
