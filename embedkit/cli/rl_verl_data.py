"""`embedkit rl verl-data`: QA question files as verl parquet rows for Search-R1-style training."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli._common import add_command
from embedkit.errors import EmbedkitError

SHARED_NQ = "../shared/data/qa_questions/nq_open_test.jsonl"
SHARED_HOTPOTQA = "../shared/data/hotpotqa_dev500/dev_subsampled.jsonl"


def add_verl_data_command(sub: argparse._SubParsersAction) -> None:
    """Register `verl-data` under `embedkit rl`."""
    parser = add_command(
        sub, "verl-data", _verl_data,
        help="write NQ / HotpotQA questions as verl RL parquet (train + test) for the embedkit search tool",
        description="One verl RL row per answered question (data_source searchR1_<name>, agent_name tool_agent, "
        "the question in extra_info.tools_kwargs for the search tool); the last --test-size questions of "
        "every source form test.parquet. Layout: agents/rl/verl/data.py.",
        examples=f"  embedkit rl verl-data --source nq={SHARED_NQ} --source hotpotqa={SHARED_HOTPOTQA} "
        "--out data/search_r1 --test-size 100",
    )  # fmt: skip
    parser.add_argument("--source", action="append", required=True, metavar="NAME=PATH",
                        help="a question file (jsonl or parquet) and its Search-R1 data-source name "
                             "(nq, hotpotqa, triviaqa, popqa, 2wikimultihopqa, musique, bamboogle); repeatable")  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for train.parquet and test.parquet")
    parser.add_argument("--test-size", type=int, default=100, help="questions per source held out (default: 100)")
    parser.add_argument("--limit", type=int, help="read only the first N questions of each source")
    parser.add_argument("--agent-loop", choices=["tool_agent", "search_r1_agent"], default="tool_agent",
                        help="the rows' agent_name: verl's tool_agent (tool calls) or search_r1_agent (Search-R1's "
                             "<search> tags, agents/rl/verl/search_r1_loop.py); picks the default instruction")  # fmt: skip
    parser.add_argument("--instruction-file", help="the user message, with {question} (default: the loop's own)")


def _verl_data(args: argparse.Namespace) -> int:
    from agents.rl.verl.data import write_search_data

    sources: dict[str, str] = {}
    for spec in args.source:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise EmbedkitError(f"--source {spec!r}: expected NAME=PATH, e.g. nq={SHARED_NQ}")
        if name in sources:
            raise EmbedkitError(f"--source {name} given twice")
        sources[name] = path
    if args.test_size < 0 or (args.limit is not None and args.limit <= 0):
        raise EmbedkitError("--test-size must be >= 0 and --limit > 0")
    instruction = None
    if args.instruction_file:
        try:
            instruction = Path(args.instruction_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise EmbedkitError(f"cannot read --instruction-file {args.instruction_file}: {error}") from None
    written = write_search_data(sources, args.out, test_size=args.test_size, limit=args.limit,
                                agent_loop=args.agent_loop, instruction=instruction)  # fmt: skip
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0
