"""Argument helpers shared by several commands, so every command spells an option the same way."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from embedkit.defaults import DEFAULT_BATCH_SIZE

HELP_FORMATTER = argparse.RawDescriptionHelpFormatter


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (so `--k 0`, `--batch-size 0`, `--max-length -5` exit 2 with a message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_tag(text: str) -> str:
    """argparse type for a TREC run tag: one non-empty word (the 6th whitespace-separated column)."""
    if not text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a run tag must be one word without spaces (TREC run columns are whitespace-separated)")
    return text


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int | None],
    *,
    help: str,
    description: str = "",
    examples: str = "",
) -> argparse.ArgumentParser:
    """Add a subcommand whose `--help` shows a description and worked examples."""
    epilog = f"examples:\n{examples}" if examples else None
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=HELP_FORMATTER,
    )
    parser.set_defaults(handler=handler)
    return parser


def add_corpus_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("corpus")
    group.add_argument(
        "--corpus",
        required=required,
        help="BEIR corpus.jsonl, pyserini jsonl (id, contents), any jsonl/tsv/csv/parquet, a BEIR dataset "
        "folder, a folder saved by `datasets`, or a hub dataset id (hf:NAME[:SPLIT])",
    )
    group.add_argument("--id-field", help="field holding the document id (default: _id, id, docid, …)")
    group.add_argument("--text-field", help="field holding the text (default: text, contents, …)")
    group.add_argument("--title-field", help="field holding the title (default: title when present)")


def add_encoder_arguments(parser: argparse.ArgumentParser, *, model_default: str | None) -> None:
    from embedkit.defaults import DEFAULT_MODEL  # not embedkit.encoding: building the parser stays light

    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--model",
        default=model_default,
        help=f"sentence-transformers model: local path or hub id (default: {model_default or DEFAULT_MODEL})",
    )
    group.add_argument("--query-prefix", help="text put before every query, e.g. 'query: ' for e5")
    group.add_argument("--passage-prefix", help="text put before every document, e.g. 'passage: ' for e5")
    group.add_argument(
        "--query-instruction",
        help="task instruction for instruction-tuned models; becomes the query prefix through --instruction-template",
    )
    group.add_argument(
        "--instruction-template",
        default=None,
        help="how an instruction becomes a query prefix (default: 'Instruct: {instruction}\\nQuery: ')",
    )
    group.add_argument("--no-normalize", action="store_true", help="keep raw embeddings (default: L2-normalize)")
    group.add_argument("--max-length", type=positive_int,
                       help="truncate inputs to this many tokens (default: the model's)")
    add_device_and_batch_size(group)
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights' precision (auto: float16 on CUDA, float32 elsewhere)",
    )


def add_encoder_runtime_arguments(parser: argparse.ArgumentParser, *, title: str | None = None) -> None:
    """--model/--device/--batch-size for commands whose encoder settings come from an index manifest."""
    group = parser.add_argument_group(title or "encoder (settings come from the index manifest)")
    group.add_argument("--model", help="local copy of the index's model (must have the same weights)")
    add_device_and_batch_size(group, batch_help="queries/documents per forward pass")


def add_device_and_batch_size(group: argparse._ActionsContainer, *, batch_help: str = "texts per forward pass") -> None:
    """The encoder runtime flags every encoding command shares: --device and --batch-size."""
    group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    group.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                       help=f"{batch_help} (default: {DEFAULT_BATCH_SIZE})")


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def encoder_config_from_args(args: argparse.Namespace):
    """The `EncoderConfig` described by the options of `add_encoder_arguments`."""
    from embedkit.encoding.config import DEFAULT_INSTRUCTION_TEMPLATE, DEFAULT_MODEL, EncoderConfig

    return EncoderConfig(
        model=args.model or DEFAULT_MODEL,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
        query_instruction=args.query_instruction,
        instruction_template=args.instruction_template or DEFAULT_INSTRUCTION_TEMPLATE,
        normalize=not args.no_normalize,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )


def field_map_from_args(args: argparse.Namespace):
    from embedkit.data.corpus import FieldMap

    return FieldMap(id_field=args.id_field, text_field=args.text_field, title_field=args.title_field)


def print_hits(query: str, hits, *, width: int = 100, out=None) -> None:
    """A readable ranked table: rank, score, id, title and a snippet of the text."""
    import sys

    out = out or sys.stdout
    print(f"\nquery: {query}", file=out)
    print(f"{'rank':>4}  {'score':>7}  {'id':<14} title / snippet", file=out)
    for hit in hits:
        title = _shorten(hit.title, 48)
        snippet = _shorten(hit.text, max(20, width - 32 - len(title)))
        label = f"{title} — {snippet}" if title else snippet
        print(f"{hit.rank:>4}  {hit.score:>7.4f}  {_shorten(hit.id, 14):<14} {label}", file=out)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
