"""`embedkit index …`: the index subcommands. Each lives in a module listed in INDEX_COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib

INDEX_COMMAND_MODULES: list[str] = [
    "embedkit.cli.index_build",
    "embedkit.cli.index_lifecycle",
    "embedkit.cli.index_reencode",
    "embedkit.cli.index_import",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build, update and inspect indexes",
        description="Build, update and inspect index folders (FAISS dense indexes and BM25 indexes).",
    )
    index_subparsers = parser.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    for module_name in INDEX_COMMAND_MODULES:
        importlib.import_module(module_name).register(index_subparsers)
