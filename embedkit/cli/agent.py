"""`embedkit agent run`: run a search agent over an index or a /retrieve server; write trajectories."""

from __future__ import annotations

import argparse
import os

from embedkit.cli._common import add_command
from embedkit.errors import DataFormatError, EmbedkitError

RUN_EXAMPLES = """\
  embedkit agent run --questions ../shared/data/hotpotqa_dev500/dev_subsampled.jsonl --index indexes/hotpotqa \\
      --llm heuristic --out runs/agent.jsonl
  embedkit agent run --questions q.jsonl --retriever-url http://127.0.0.1:8000 \\
      --llm openai:http://127.0.0.1:8001/v1 --llm-model Qwen2.5-7B-Instruct --out runs/agent.jsonl
  embedkit agent run --questions q.jsonl --index indexes/hotpotqa --llm hf:runs/policy --no-chat \\
      --config configs/agent.yaml --max-turns 5 --top-k 3 --out runs/agent.jsonl
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="search agents (Search-R1 format) over an index or a retrieval server",
        description="Run LLM search agents that interleave <think>, <search>, <information> and <answer>.",
    )
    sub = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    run = add_command(
        sub, "run", run_agent,
        help="answer questions with a search agent; write trajectories as jsonl and print EM/F1",
        description=(
            "Answer each question with a search agent. The policy is an LLM (a local transformers model or any\n"
            "OpenAI-compatible endpoint) or `heuristic`, a deterministic two-hop policy that needs no LLM.\n"
            "Retrieval failures are retried, then recorded in the trajectory; the run goes on."
        ),
        examples=RUN_EXAMPLES,
    )  # fmt: skip
    run.add_argument("--questions", required=True, help="jsonl: question/question_text + answers (optional)")
    run.add_argument("--start", type=int, default=0, help="first question (0-based, default: 0)")
    run.add_argument("--limit", type=int, help="number of questions (default: all)")
    add_retriever_arguments(run)
    add_llm_arguments(run, default="heuristic")
    run.add_argument("--config", help="agent YAML (configs/agent.yaml); flags below override it")
    run.add_argument("--max-turns", type=int, help="model turns per question (default: 4)")
    run.add_argument("--top-k", type=int, help="passages per search (default: 3)")
    run.add_argument("--max-new-tokens", type=int, help="tokens per model turn (default: 512)")
    run.add_argument("--temperature", type=float, help="sampling temperature (default: 0, greedy)")
    run.add_argument("--query-template", help="retriever input, e.g. '{question} [SEP] {query}' (default: {query})")
    run.add_argument("--out", "-o", required=True, help="trajectories jsonl to write")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_retriever_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("retriever")
    group.add_argument("--index", help="an embedkit index folder, searched in this process")
    group.add_argument("--retriever-url", help="a Search-R1 compatible server (POST /retrieve), e.g. `embedkit serve`")
    group.add_argument("--retriever-key-env", default="EMBEDKIT_API_KEY",
                       help="environment variable holding the server's bearer token (default: EMBEDKIT_API_KEY)")  # fmt: skip
    group.add_argument("--retrieval-timeout", type=float, help="seconds per retrieval call (default: 30)")
    group.add_argument("--retrieval-retries", type=int, help="extra attempts per failed call (default: 2)")


def add_llm_arguments(parser: argparse.ArgumentParser, *, default: str | None, flag: str = "--llm") -> None:
    group = parser.add_argument_group("LLM")
    group.add_argument(flag, default=default, dest="llm",
                       help="heuristic | hf:PATH_OR_ID | openai:URL (default: %(default)s)")  # fmt: skip
    group.add_argument("--llm-model", help="model name served by the OpenAI-compatible endpoint")
    group.add_argument("--llm-key-env", default="OPENAI_API_KEY",
                       help="environment variable with the endpoint's API key (default: OPENAI_API_KEY)")  # fmt: skip
    group.add_argument("--no-chat", action="store_true",
                       help="plain-text continuation (base/RL models, /v1/completions) instead of chat messages")  # fmt: skip


def agent_config_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from agents.search_agent.config import AgentConfig

    overrides = {
        "max_turns": args.max_turns, "top_k": args.top_k, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "query_template": args.query_template,
        "retrieval_timeout_s": args.retrieval_timeout, "retrieval_retries": args.retrieval_retries,
    }  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if args.config:
            return AgentConfig.from_yaml(args.config, overrides=overrides)
        return AgentConfig(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        raise DataFormatError(first["msg"], path=args.config, field=".".join(map(str, first["loc"])) or None) from None


def run_agent(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from agents.search_agent import SearchAgent, load_questions, summarize, write_trajectories
    from agents.search_agent.backends import build_policy
    from agents.search_agent.retrievers import open_retriever

    config = agent_config_from_args(args)
    questions = load_questions(args.questions, start=args.start, limit=args.limit)
    retriever = open_retriever(args.index, args.retriever_url, api_key=os.environ.get(args.retriever_key_env),
                               timeout=config.retrieval_timeout_s)  # fmt: skip
    policy = build_policy(args.llm, model=args.llm_model, api_key=os.environ.get(args.llm_key_env),
                          chat=not args.no_chat)  # fmt: skip
    agent = SearchAgent(policy, retriever, config)
    with tqdm(total=len(questions), unit="q", desc="agent", disable=args.quiet) as bar:
        trajectories = agent.run(questions, progress=bar.update)
    write_trajectories(args.out, trajectories)
    print_summary(summarize(trajectories))
    print(f"trajectories: {args.out}")
    return 0


def print_summary(summary: dict[str, float]) -> None:
    if not summary["questions"]:
        raise EmbedkitError("no questions were run")
    em = "n/a" if summary["scored"] == 0 else f"{summary['EM']:.4f}"
    f1 = "n/a" if summary["scored"] == 0 else f"{summary['F1']:.4f}"
    print(f"questions {int(summary['questions'])} (scored {int(summary['scored'])})  EM {em}  F1 {f1}  "
          f"answered {summary['answered']:.1%}")  # fmt: skip
    histogram = "  ".join(f"{k.split('=')[1]}:{v:.1%}" for k, v in summary.items() if k.startswith("searches="))
    print(f"searches per question: mean {summary['searches_mean']:.2f}, max {int(summary['searches_max'])}  "
          f"[{histogram}]")  # fmt: skip
    print(f"invalid turns {int(summary['invalid_turns'])}, retrieval failures {int(summary['retrieval_failures'])}")
