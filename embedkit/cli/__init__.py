"""The `embedkit` command line.

Each command lives in its own module under `embedkit.cli` and exposes `register(subparsers)`;
`COMMAND_MODULES` lists them in the order `embedkit --help` shows them. Handlers return an exit status
(or None for 0) and raise `EmbedkitError` for anything the user must fix: the CLI prints its message and
exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from embedkit.errors import EXIT_USER_ERROR, EmbedkitError

COMMAND_MODULES: list[str] = [
    "embedkit.cli.demo",
    "embedkit.cli.index",
    "embedkit.cli.search",
    "embedkit.cli.eval",
    "embedkit.cli.beir",
    "embedkit.cli.fuse",
    "embedkit.cli.serve",
    "embedkit.cli.encode",
    "embedkit.cli.train",
    "embedkit.cli.boom",
    "embedkit.cli.cocoa",
    "embedkit.cli.fidelity",
    "embedkit.cli.agent",
    "embedkit.cli.agentic_r",
    "embedkit.cli.rl",
    "embedkit.cli.rewards",
]

DESCRIPTION = """\
embedkit: build and search embedding indexes, evaluate, train and merge embedders.

Try:
  embedkit demo                                   # index a bundled corpus, answer a few queries
  embedkit index build --corpus corpus.jsonl --model sentence-transformers/all-MiniLM-L6-v2 --out indexes/mine
  embedkit search indexes/mine "what is dense retrieval?"
  embedkit beir ../shared/data/scifact            # encode, index, search and evaluate a BEIR dataset
"""


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (reading package metadata slows every start-up)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object,
                 option_string: str | None = None) -> None:
        import embedkit

        parser.exit(message=f"embedkit {embedkit.__version__}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedkit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        # A listed module that fails to import is a bug to see, not a command to hide.
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for a user error, 141 when the reader of stdout went away)."""
    try:
        return _run(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe or socket of the command's own broke: a real error
        return _stdout_closed()


def _run(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed stdout shows here at the latest, not in the interpreter's last flush
    except EmbedkitError as error:
        print(f"embedkit: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        from embedkit.io import is_disk_full

        if not is_disk_full(error):
            raise
        print(f"embedkit: error: no space left on the device ({error}); outputs are written atomically, so "
              "earlier versions of them are unchanged", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("embedkit: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe or socket whose reader has closed it (`embedkit … | head -1`)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), or stdout is not a real file
        return True


def _stdout_closed() -> int:
    """Stop quietly, as Unix tools do when their reader goes away.

    Python's recipe (https://docs.python.org/3/library/signal.html#note-on-sigpipe): point stdout at devnull,
    so the interpreter's final flush of what is still buffered cannot raise again. The status is the one a
    shell reports for a tool killed by SIGPIPE (128 + 13), so `set -o pipefail` scripts see the usual value.
    """
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE
