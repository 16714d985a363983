"""`embedkit agent run|eval`: run a search agent over an index or a /retrieve server; write trajectories and
QA scores per data source."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from embedkit.cli._common import add_command
from embedkit.errors import DataFormatError, EmbedkitError

RUN_EXAMPLES = """\
  embedkit agent run --questions ../shared/data/hotpotqa_dev500/dev_subsampled.jsonl --index indexes/hotpotqa \\
      --llm heuristic --out runs/agent.jsonl
  embedkit agent run --questions q.jsonl --retriever-url http://127.0.0.1:8000 \\
      --llm openai:http://127.0.0.1:8001/v1 --llm-model Qwen2.5-7B-Instruct --out runs/agent.jsonl
  embedkit agent run --questions q.jsonl --index indexes/hotpotqa --llm hf:runs/policy --prompt-mode completion \\
      --config configs/agent.yaml --max-turns 5 --top-k 3 --out runs/agent.jsonl
"""
EVAL_EXAMPLES = """\
  # Search-R1's test set (nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle) in one run
  embedkit agent eval --questions data/nq_hotpotqa_train/test.parquet --retriever-url http://127.0.0.1:8000 \\
      --llm openai:http://127.0.0.1:8001/v1 --llm-model SearchR1-qwen2.5-7b --llm-tokenizer Qwen/Qwen2.5-7B \\
      --prompt-mode search_r1 --max-turns 4 --top-k 3 --llm-concurrency 64 --out runs/search_r1_test.jsonl
  embedkit agent eval --questions ../shared/data/qa_questions/nq_open_test.jsonl \\
      ../shared/data/qa_questions/bamboogle_test.jsonl --index indexes/wiki18 --llm heuristic --out runs/eval.jsonl
  embedkit agent eval --trajectories runs/eval.jsonl          # re-score a finished run
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
    add_run_arguments(run)
    run.add_argument("--eval", dest="metrics", nargs="?", const="", metavar="METRICS_JSON",
                     help="also score per data_source as `agent eval` does; write the metrics JSON "
                          "(default: OUT with .metrics.json)")  # fmt: skip
    evaluate = add_command(
        sub, "eval", eval_agent,
        help="run a search agent on QA files and report EM / F1 / sub-EM per data_source and overall",
        description=(
            "Evaluate a search agent the way Search-R1 and FlashRAG do: questions from their jsonl / parquet\n"
            "files (question, golden_answers, data_source; or verl's prompt / reward_model / extra_info), answers\n"
            "normalised as in their scripts, EM / F1 / sub-EM per data_source and overall. Several files, or one\n"
            "file with several data sources, run in one command. Writes the trajectories (each with its accepted\n"
            "`answers` beside the `prediction`) and the metrics as JSON."
        ),
        examples=EVAL_EXAMPLES,
    )  # fmt: skip
    add_run_arguments(evaluate, required=False)
    evaluate.add_argument("--trajectories", help="score this trajectories jsonl instead of running the agent")
    evaluate.add_argument("--metrics", help="metrics JSON to write (default: OUT with .metrics.json)")


def add_run_arguments(run: argparse.ArgumentParser, *, required: bool = True) -> None:
    run.add_argument("--questions", nargs="+", required=required,
                     help="jsonl or parquet files: question/golden_answers/data_source, or verl's prompt/reward_model")  # fmt: skip
    run.add_argument("--start", type=int, default=0, help="first question of each file (0-based, default: 0)")
    run.add_argument("--limit", type=int, help="number of questions per file (default: all)")
    add_retriever_arguments(run)
    add_llm_arguments(run, default="heuristic")
    run.add_argument("--config", help="agent YAML (configs/agent.yaml); flags below override it")
    run.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                     help="override an AgentConfig field, e.g. --set prompt_source=template (repeatable)")  # fmt: skip
    run.add_argument("--max-turns", type=int, help="search rounds per question; the answer turn is extra (default: 4)")
    run.add_argument("--top-k", type=int, help="passages per search (default: 3)")
    run.add_argument("--max-new-tokens", type=int, help="tokens per model turn (default: 512)")
    run.add_argument("--temperature", type=float, help="sampling temperature (default: 0, greedy)")
    run.add_argument("--query-template", help="retriever input, e.g. '{question} [SEP] {query}' (default: {query})")
    run.add_argument("--prompt-file", help="text file with the instruction (first user message; must hold {question})")
    run.add_argument("--out", "-o", required=required, help="trajectories jsonl to write")
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
                       help="plain-text continuation (base/RL models, /v1/completions) instead of chat messages; "
                            "same as --prompt-mode completion")  # fmt: skip
    group.add_argument("--prompt-mode", choices=["chat", "completion", "search_r1"],
                       help="chat messages, one plain string, or Search-R1's token stream (chat template on the "
                            "first user message, one assistant turn continued) (default: chat)")  # fmt: skip
    group.add_argument("--llm-concurrency", type=int, default=None,
                       help="requests in flight to an OpenAI-compatible endpoint (default: 8)")
    group.add_argument("--llm-tokenizer",
                       help="the served model's tokenizer (path or hub id), for --prompt-mode search_r1 over openai:")


def agent_config_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from agents.search_agent.config import AgentConfig
    from embedkit.config import parse_set_overrides

    prompt_mode = getattr(args, "prompt_mode", None) or ("completion" if getattr(args, "no_chat", False) else None)
    overrides = {
        "max_turns": getattr(args, "max_turns", None), "top_k": getattr(args, "top_k", None),
        "max_new_tokens": getattr(args, "max_new_tokens", None), "temperature": getattr(args, "temperature", None),
        "query_template": getattr(args, "query_template", None), "prompt_mode": prompt_mode,
        "retrieval_timeout_s": getattr(args, "retrieval_timeout", None),
        "retrieval_retries": getattr(args, "retrieval_retries", None),
    }  # fmt: skip
    prompt_file = getattr(args, "prompt_file", None)
    if prompt_file:
        try:
            overrides["prompt_template"] = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DataFormatError(f"cannot read the prompt file: {error}", path=prompt_file) from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(parse_set_overrides(getattr(args, "overrides", None)))
    try:
        if args.config:
            return AgentConfig.from_yaml(args.config, overrides=overrides)
        return AgentConfig(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        raise DataFormatError(first["msg"], path=args.config, field=".".join(map(str, first["loc"])) or None) from None


def _load_all_questions(args: argparse.Namespace) -> list:
    from agents.search_agent import load_questions

    questions = []
    seen: set[tuple[str, str]] = set()
    for path in args.questions:
        for question in load_questions(path, start=args.start, limit=args.limit):
            key = (question.data_source, question.id)
            if key in seen:  # two files of one data set: ids must stay unique within a data source
                raise DataFormatError(f"question id '{question.id}' of data source '{question.data_source}' "
                                      "appears in two files", path=path)  # fmt: skip
            seen.add(key)
            questions.append(question)
    return questions


def _run(args: argparse.Namespace) -> list:
    from tqdm.auto import tqdm

    from agents.search_agent import SearchAgent, write_trajectories
    from agents.search_agent.backends import build_policy
    from agents.search_agent.retrievers import open_retriever

    config = agent_config_from_args(args)
    questions = _load_all_questions(args)
    retriever = open_retriever(args.index, args.retriever_url, api_key=os.environ.get(args.retriever_key_env),
                               timeout=config.retrieval_timeout_s)  # fmt: skip
    concurrency = {} if args.llm_concurrency is None else {"concurrency": args.llm_concurrency}
    policy = build_policy(args.llm, model=args.llm_model, api_key=os.environ.get(args.llm_key_env),
                          mode=config.prompt_mode, tokenizer=args.llm_tokenizer, **concurrency)  # fmt: skip
    agent = SearchAgent(policy, retriever, config)
    with tqdm(total=len(questions), unit="q", desc="agent", disable=args.quiet) as bar:
        trajectories = agent.run(questions, progress=bar.update)
    write_trajectories(args.out, trajectories)
    failed = [t for t in trajectories if t.status == "error"]
    if failed and len(failed) == len(trajectories):
        # A failed batch does not stop a run, but a run in which nothing ran is an error, not a result.
        raise EmbedkitError(f"every question failed ({len(failed)}; trajectories in {args.out}): {failed[0].error}")
    return trajectories


def run_agent(args: argparse.Namespace) -> int:
    from agents.search_agent import summarize

    trajectories = _run(args)
    print_summary(summarize(trajectories))
    if args.metrics is not None:
        _report(trajectories, args.metrics or _default_metrics_path(args.out))
    print(f"trajectories: {args.out}")
    return 0


def eval_agent(args: argparse.Namespace) -> int:
    from agents.search_agent import read_trajectories

    if args.trajectories:
        if args.questions:
            raise EmbedkitError("give --questions (run the agent) or --trajectories (score a finished run), not both")
        trajectories = read_trajectories(args.trajectories)
        if not trajectories:
            raise DataFormatError("no trajectories in file", path=args.trajectories)
        metrics = args.metrics or _default_metrics_path(args.trajectories)
    else:
        if not args.questions or not args.out:
            raise EmbedkitError("agent eval needs --questions and --out (or --trajectories to re-score a run)")
        trajectories = _run(args)
        metrics = args.metrics or _default_metrics_path(args.out)
        print(f"trajectories: {args.out}")
    _report(trajectories, metrics)
    return 0


def _default_metrics_path(out: str) -> str:
    path = Path(out)
    return str(path.with_name(path.name.removesuffix(".jsonl") + ".metrics.json"))


def _report(trajectories: list, metrics_path: str) -> None:
    from agents.search_agent import evaluate, format_report
    from embedkit.io import atomic_write

    report = evaluate(trajectories)
    print(format_report(report))
    with atomic_write(metrics_path) as handle:
        handle.write(json.dumps(report, indent=2) + "\n")
    print(f"metrics: {metrics_path}")


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
