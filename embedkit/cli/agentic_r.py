"""`embedkit agentic-r label|train|iterate`: train a retriever on passage utility along agent trajectories."""

from __future__ import annotations

import argparse
import json
import os

from embedkit.cli._common import add_command
from embedkit.cli.agent import add_llm_arguments, agent_config_from_args
from embedkit.errors import EmbedkitError

LABEL_EXAMPLES = """\
  embedkit agentic-r label --trajectories runs/agent.jsonl --index indexes/hotpotqa --out runs/pairs.jsonl \\
      --judge openai:http://127.0.0.1:8001/v1 --judge-model Qwen2.5-7B-Instruct --local llm_judge
  embedkit agentic-r label --trajectories runs/agent.jsonl --index indexes/hotpotqa --out runs/pairs.jsonl \\
      --local embedder --global containment   # no LLM: the embedder's cosine and answer containment (stand-ins)
  embedkit agentic-r label --trajectories runs/agent.jsonl --index indexes/hotpotqa --out runs/pairs.jsonl \\
      --config configs/agentic_r.yaml --set judge_input=question_and_query --set negatives=7
"""
TRAIN_EXAMPLES = """\
  embedkit agentic-r train --pairs runs/pairs.jsonl --out runs/retriever           # e5-base-v2, query:/passage:
  embedkit agentic-r train --pairs runs/pairs.jsonl --out runs/retriever --base-model \\
      sentence-transformers/all-MiniLM-L6-v2 --query-prefix '' --passage-prefix '' \\
      --corpus ../shared/data/hotpotqa_dev500/beir --index-out indexes/hotpotqa-agentic-r
"""
ITERATE_EXAMPLES = """\
  embedkit agentic-r iterate --config configs/agentic_r.yaml
  embedkit agentic-r iterate --config configs/agentic_r_hotpotqa_minilm.yaml --rounds 1 --output-dir runs/ar
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agentic-r",
        help="Agentic-R: label passage utility, train the retriever, iterate with the agent",
        description="Train a retriever on what helps a search agent answer (local + global passage utility).",
    )
    sub = parser.add_subparsers(dest="agentic_r_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    label = add_command(
        sub, "label", _label,
        help="score candidate passages along trajectories and write training pairs (jsonl)",
        description=(
            "For every search step: the current retriever's top-20 candidates for what the agent sent (the plain\n"
            "query in round 1) get a local utility (LLM judge: sub-answers inferred from the whole trajectory,\n"
            "then the sub-query scored listwise 0-100 on a five-band rubric; or the embedder's cosine) and a global\n"
            "utility (the agent that produced the trajectory re-run with only that passage, exact match of its\n"
            "answer; or answer containment). Pairs: sort by (EM, local); skip when the best has EM 0 or local\n"
            "< 0.6; every candidate tied with the best is a positive (first 3 kept), never a negative; 15 random\n"
            "negatives from the rest (steps with fewer are skipped); queries '{question} [SEP] {query}'."
        ),
        examples=LABEL_EXAMPLES,
    )  # fmt: skip
    label.add_argument("--trajectories", required=True, help="jsonl written by `embedkit agent run`")
    label.add_argument("--index", required=True, help="the current retriever's dense index")
    label.add_argument("--out", "-o", required=True, help="training pairs jsonl to write")
    label.add_argument("--config", help="YAML with a `label` (and `agent`) section, e.g. configs/agentic_r.yaml")
    label.add_argument("--set", dest="label_overrides", action="append", metavar="KEY=VALUE",
                       help="override a `label` setting (repeatable), e.g. --set judge_input=question_and_query")
    label.add_argument("--local", choices=["llm_judge", "embedder"],
                       help="local utility scorer: llm_judge (default, upstream; needs --judge) or embedder (the "
                       "embedding-similarity stand-in, recorded in every pair and in the stats)")  # fmt: skip
    label.add_argument("--global", dest="global_utility", choices=["rerun", "containment"],
                       help="global utility scorer")  # fmt: skip
    label.add_argument("--candidates", type=int, help="candidates per step (default: 20)")
    label.add_argument("--min-local", type=float, help="skip steps whose best local score is lower (default: 0.6)")
    label.add_argument("--judge", help="LLM judge for local utility: hf:PATH or openai:URL")
    label.add_argument("--judge-model", help="model name at the judge's endpoint")
    label.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="env variable with the judge's API key")
    add_llm_arguments(label, default=None, flag="--agent-llm")
    label.add_argument("--allow-policy-mismatch", action="store_true",
                       help="re-run steps with --agent-llm even though the trajectories record another policy")
    label.add_argument("--agent-config", help="agent YAML used for re-runs (defaults to the config's `agent`)")
    label.set_defaults(max_turns=None, top_k=None, max_new_tokens=None, temperature=None, query_template=None,
                       retrieval_timeout=None, retrieval_retries=None)  # fmt: skip

    train = add_command(
        sub, "train", _train,
        help="train the retriever on labelled pairs (InfoNCE, τ=0.01) and optionally re-index a corpus",
        examples=TRAIN_EXAMPLES,
    )  # fmt: skip
    train.add_argument("--pairs", required=True, help="training pairs jsonl from `agentic-r label`")
    train.add_argument("--out", "-o", required=True, help="folder for the trained model (OUT/model)")
    train.add_argument("--config", help="YAML with a `train` section")
    train.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                       help="override a `train` setting (repeatable), e.g. --set hard_negatives=7")
    train.add_argument("--base-model", help="model to start from (default: intfloat/e5-base-v2)")
    train.add_argument("--query-prefix", help="default 'query: '")
    train.add_argument("--passage-prefix", help="default 'passage: '")
    train.add_argument("--epochs", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--max-length", type=int, help="truncate training inputs to this many tokens")
    train.add_argument("--corpus", help="re-index this corpus with the trained model")
    train.add_argument("--index-out", help="where to write the new index (with --corpus)")
    train.add_argument("--overwrite", action="store_true")

    it = add_command(
        sub, "iterate", _iterate,
        help="K rounds of agent run → label → train (from the base) → re-index → agent update, checkpointed",
        examples=ITERATE_EXAMPLES,
    )  # fmt: skip
    it.add_argument("--config", required=True, help="YAML (configs/agentic_r*.yaml)")
    it.add_argument("--rounds", type=int, help="overrides rounds")
    it.add_argument("--output-dir", help="overrides output_dir")
    it.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                    help="override any setting by its dotted name (repeatable), e.g. --set label.min_local=0.5")
    it.add_argument("--judge", help="LLM judge for local utility (hf:PATH or openai:URL)")
    it.add_argument("--judge-model")
    it.add_argument("--judge-key-env", default="OPENAI_API_KEY")


def _judge(args: argparse.Namespace):
    if not args.judge:
        return None
    from agents.search_agent.backends import build_backend

    return build_backend(args.judge, model=args.judge_model, api_key=os.environ.get(args.judge_key_env))


def _label(args: argparse.Namespace) -> int:
    from agents.agentic_r import LabelConfig, label, write_pairs
    from agents.agentic_r.label import require_judge, rerun_policy
    from agents.retrieval import IndexRetriever
    from agents.search_agent import SearchAgent, read_trajectories
    from agents.search_agent.config import AgentConfig
    from embedkit.config import parse_set_overrides, validate_config
    from embedkit.index import Index

    overrides = {"local": args.local, "global_utility": args.global_utility, "candidates": args.candidates,
                 "min_local": args.min_local, **parse_set_overrides(args.label_overrides)}  # fmt: skip
    if args.config:
        config = LabelConfig.from_yaml(args.config, section="label", overrides=overrides)
    else:
        config = validate_config(LabelConfig, {k: v for k, v in overrides.items() if v is not None})
    judge = _judge(args)
    require_judge(config, judge)  # before the trajectories, index and agent are loaded
    if args.agent_config:
        args.config = args.agent_config
        agent_config = agent_config_from_args(args)
    elif args.config:
        agent_config = AgentConfig.from_yaml(args.config)
    else:
        agent_config = AgentConfig()
    trajectories = read_trajectories(args.trajectories)
    index = Index.load(args.index)
    retriever = IndexRetriever(index)
    agent = None
    if config.global_utility == "rerun":
        given = _given_policy(args, agent_config)
        record = rerun_policy(trajectories, given, allow_mismatch=args.allow_policy_mismatch)
        if record.mode and record.mode != agent_config.prompt_mode:  # re-run in the prompt mode it ran in
            agent_config = agent_config.model_copy(update={"prompt_mode": record.mode})
        agent = SearchAgent(_policy_from_record(record, args), retriever, agent_config)
    pairs, stats = label(trajectories, retriever, config, agent=agent, judge=judge, index=index)
    if not pairs:
        raise EmbedkitError(f"no training pairs: {stats}")
    write_pairs(args.out, pairs)
    print(json.dumps(stats))
    print(f"{len(pairs)} training pairs → {args.out}")
    return 0


def _given_policy(args: argparse.Namespace, agent_config):
    """The policy named with --agent-llm, recorded as `embedkit agent run` records it (comparable with the
    trajectories' own)."""
    from agents.search_agent.trajectory import PolicyRecord

    if not args.llm:
        return None
    if args.llm == "heuristic":
        return PolicyRecord(spec="heuristic")
    mode = getattr(args, "prompt_mode", None) or ("completion" if args.no_chat else agent_config.prompt_mode)
    return PolicyRecord(spec=args.llm, model=args.llm_model if args.llm.startswith("openai:") else None,
                        chat=mode == "chat", mode=mode, tokenizer=getattr(args, "llm_tokenizer", None))  # fmt: skip


def _policy_from_record(record, args: argparse.Namespace):
    from agents.search_agent.backends import build_policy

    extra = {key: value for key, value in (("mode", record.mode), ("tokenizer", record.tokenizer)) if value}
    return build_policy(record.spec, model=record.model, api_key=os.environ.get(args.llm_key_env), chat=record.chat,
                        **extra)  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from agents.agentic_r import RetrieverTrainConfig, read_pairs, reindex, train_retriever
    from embedkit.config import parse_set_overrides, validate_config

    overrides = {"base_model": args.base_model, "query_prefix": args.query_prefix,
                 "passage_prefix": args.passage_prefix, "epochs": args.epochs, "batch_size": args.batch_size,
                 "learning_rate": args.learning_rate, "max_length": args.max_length,
                 **parse_set_overrides(args.overrides)}  # fmt: skip
    if args.config:
        config = RetrieverTrainConfig.from_yaml(args.config, section="train", overrides=overrides)
    else:
        config = validate_config(RetrieverTrainConfig, {k: v for k, v in overrides.items() if v is not None})
    if bool(args.corpus) != bool(args.index_out):
        raise EmbedkitError("give --corpus and --index-out together to re-index")
    model_dir = train_retriever(read_pairs(args.pairs), config, args.out, overwrite=args.overwrite)
    print(f"retriever: {model_dir}")
    if args.corpus:
        index = reindex(args.corpus, model_dir, args.index_out, config, overwrite=args.overwrite)
        print(f"index: {index}")
    return 0


def _iterate(args: argparse.Namespace) -> int:
    from agents.agentic_r import IterateConfig, iterate
    from agents.agentic_r.label import require_judge
    from embedkit.config import parse_set_overrides

    config = IterateConfig.from_yaml(args.config, overrides={"rounds": args.rounds, "output_dir": args.output_dir,
                                                             **parse_set_overrides(args.overrides)})  # fmt: skip
    judge = _judge(args)
    require_judge(config.label, judge)  # now, not after the first round's agent run
    summaries = iterate(config, judge=judge)
    for summary in summaries:
        agent = summary["agent"]
        print(f"round {summary['round']}: agent EM {agent['EM']:.4f} (before this round's retriever), "
              f"{summary['pairs']} pairs, index {summary['index']}")  # fmt: skip
        if "eval" in summary:
            before, after = summary["eval"]["before"], summary["eval"]["after"]
            for source in after["by_source"]:
                em_before = (before or {}).get("by_source", {}).get(source, {}).get("em")
                shown = "n/a" if em_before is None else f"{em_before:.4f}"
                print(f"  {source}: EM {shown} → {after['by_source'][source]['em']:.4f}")
    return 0
