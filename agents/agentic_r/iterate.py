"""Agentic-R rounds: run the agent → label utility → train the retriever from the base → re-index → update
the agent; every round is checkpointed in `output_dir/round_K/` and a finished round is never redone.

    results = iterate(IterateConfig.from_yaml("configs/agentic_r.yaml"))

Round K's folder holds `trajectories.jsonl` (the agent with round K-1's retriever), `pairs.jsonl` and
`label_stats.json`, `retriever/model` (trained from `train.base_model`), `index/` (the corpus re-encoded),
`policy/` when the agent is updated, and `round.json` (written last: the round's completion mark). Round 1's
agent searches the base retriever with `agent.query_template` (the plain query, as upstream), and its steps'
candidates are fetched with that same input; from round 2 on the agent, the RL agent update and the
candidates use `label.query_template` ("{question} [SEP] {query}"), the input the retriever was trained on.
With `eval_questions` (QA files in Search-R1's layout), the agent is evaluated with the base retriever
(`eval_base/`) and after every round with the new retriever and policy (`round_K/eval/`): EM / F1 / sub-EM per
data_source, also in `round.json` under `eval.before` / `eval.after`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agents.agentic_r.config import IterateConfig
from agents.agentic_r.label import label
from agents.agentic_r.pairs import read_pairs, write_pairs
from agents.agentic_r.train import reindex, train_retriever
from agents.retrieval import IndexRetriever
from agents.search_agent.agent import SearchAgent
from agents.search_agent.backends import build_policy
from agents.search_agent.policy import Policy
from agents.search_agent.questions import load_questions
from agents.search_agent.trajectory import read_trajectories, summarize, write_trajectories
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_write

log = logging.getLogger(__name__)


def iterate(config: IterateConfig, *, policy: Policy | None = None, judge: Any = None, echo=print) -> list[dict]:
    """Run (or resume) `config.rounds` rounds; returns one summary dict per round."""
    out = Path(config.output_dir)
    # A missing or invalid RL config is found now, not after the first round's hours of work.
    agent_update_rl_config(config, out / "policy_run")
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(config.questions, start=config.question_start, limit=config.question_limit)
    policy = policy or build_policy(config.policy, model=config.policy_model, chat=config.policy_chat)
    index_path = Path(config.base_index) if config.base_index else _base_index(config, out)
    agent_config = config.agent
    summaries: list[dict] = []
    if config.eval_questions:
        base_eval = _evaluate(config, out / "eval_base", index_path, agent_config, policy, echo, "base retriever")
    for round_no in range(1, config.rounds + 1):
        folder = out / f"round_{round_no}"
        mark = folder / "round.json"
        if mark.exists():
            summary = json.loads(mark.read_text(encoding="utf-8"))
            echo(f"round {round_no}: done already ({mark})")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            summary = _round(config, folder, index_path, agent_config, questions, policy, judge, echo)
        # The next round's agent: the new retriever, queried with the input it was trained on, and the
        # updated policy when there is one.
        index_path = folder / "index"
        agent_config = agent_config.model_copy(update={"query_template": config.label.query_template})
        if summary.get("policy"):
            policy = build_policy(f"hf:{summary['policy']}", chat=False)
        if not mark.exists():
            if config.eval_questions:
                after = _evaluate(config, folder / "eval", index_path, agent_config, policy, echo, f"after {folder.name}")
                summary["eval"] = {"before": base_eval if round_no == 1 else summaries[-1].get("eval", {}).get("after"),
                                   "after": after}  # fmt: skip
            with atomic_write(mark) as handle:
                json.dump(summary, handle, indent=2)
        summaries.append(summary)
    return summaries


def _evaluate(config: IterateConfig, folder: Path, index_path: Path, agent_config, policy, echo, name: str) -> dict:
    """EM / F1 / sub-EM per data_source of the agent on `config.eval_questions` (Search-R1's QA layout) with
    the retriever at `index_path`; kept in `folder` (metrics.json) and not redone."""
    from agents.search_agent.evaluate import evaluate, format_report

    metrics_path = folder / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    questions = [q for path in config.eval_questions for q in load_questions(path, limit=config.eval_limit)]
    trajectories = SearchAgent(policy, IndexRetriever.from_path(index_path), agent_config).run(questions)
    write_trajectories(folder / "trajectories.jsonl", trajectories)
    report = evaluate(trajectories)
    with atomic_write(metrics_path) as handle:
        json.dump(report, handle, indent=2)
    echo(f"evaluation, {name}:\n{format_report(report)}")
    return report


def _round(config: IterateConfig, folder: Path, index_path: Path, agent_config, questions, policy, judge, echo) -> dict:
    from embedkit.index import Index

    index = Index.load(index_path)
    retriever = IndexRetriever(index)
    agent = SearchAgent(policy, retriever, agent_config)
    trajectories_path = folder / "trajectories.jsonl"
    if trajectories_path.exists():
        trajectories = read_trajectories(trajectories_path)
    else:
        trajectories = agent.run(questions)
        write_trajectories(trajectories_path, trajectories)
    agent_metrics = summarize(trajectories)
    echo(f"{folder.name}: agent EM {agent_metrics['EM']:.3f} F1 {agent_metrics['F1']:.3f} over "
         f"{int(agent_metrics['scored'])} questions")  # fmt: skip
    pairs_path = folder / "pairs.jsonl"
    stats_path = folder / "label_stats.json"
    if pairs_path.exists() and stats_path.exists():
        pairs, stats = read_pairs(pairs_path), json.loads(stats_path.read_text(encoding="utf-8"))
    else:
        pairs, stats = label(trajectories, retriever, config.label, agent=agent, judge=judge, index=index)
        if not pairs:
            raise EmbedkitError(f"{folder.name}: labelling kept no training pairs ({stats})")
        write_pairs(pairs_path, pairs)
        with atomic_write(stats_path) as handle:
            json.dump(stats, handle, indent=2)
    echo(f"{folder.name}: {len(pairs)} training pairs from {stats['steps']} search steps ({stats})")
    model_dir = folder / "retriever" / "model"
    if not model_dir.exists():
        train_retriever(pairs, config.train, folder / "retriever", overwrite=True)
    echo(f"{folder.name}: retriever trained from {config.train.base_model} → {model_dir}")
    new_index = folder / "index"
    if not (new_index / "manifest.json").exists():
        reindex(config.corpus, model_dir, new_index, config.train, overwrite=True)
    echo(f"{folder.name}: corpus re-indexed → {new_index}")
    policy_dir = _update_agent(config, folder, new_index)
    return {"round": int(folder.name.split("_")[-1]), "agent": agent_metrics, "label": stats, "pairs": len(pairs),
            "retriever": str(model_dir), "index": str(new_index), "policy": policy_dir}  # fmt: skip


def agent_update_rl_config(config: IterateConfig, output_dir: Path) -> Any:
    """The `agents.rl` config of the agent update (its `rl_config` file with `agent_update`'s settings on top),
    or None for `agent_update.name: none`."""
    update = config.agent_update
    if update.name == "none":
        return None
    if not update.rl_config:
        raise EmbedkitError(f"agent_update {update.name} needs rl_config (an agents.rl YAML with the policy)")
    from agents.rl.config import RLConfig

    return RLConfig.from_yaml(update.rl_config, {**update.rl_overrides(), "trainer.output_dir": str(output_dir)})


def _update_agent(config: IterateConfig, folder: Path, index_path: Path) -> str | None:
    """`none`: the policy stays as it is. `ppo` / `grpo`: RL with `agents.rl` on the training questions,
    searching the new index through `SearchTool` with the retriever input the agent is evaluated with next
    round (`label.query_template`), exact-match reward; returns the saved policy folder."""
    rl_config = agent_update_rl_config(config, folder / "policy_run")
    if rl_config is None:
        return None
    from agents.rl.tasks import Example, Task
    from agents.rl.trainer import RLTrainer
    from agents.search_agent.tool import SearchTool

    questions = load_questions(config.questions, start=config.question_start, limit=config.question_limit)
    prompts = {config.agent.prompt_template.format(question=q.question): q for q in questions if q.answers}
    examples = [Example(prompt, q.answers) for prompt, q in prompts.items()]
    tool = SearchTool(IndexRetriever.from_path(index_path),
                      config.agent.model_copy(update={"query_template": config.label.query_template}))  # fmt: skip
    trainer = RLTrainer(rl_config, task=Task(examples), tool=tool)
    if tool.needs_question:
        trainer.engine = question_bound_engine(trainer.engine, tool, {p: q.question for p, q in prompts.items()})
    trainer.train()
    policy_dir = folder / "policy"
    trainer.unwrapped.policy.save_pretrained(policy_dir)
    trainer.tokenizer.save_pretrained(policy_dir)
    return str(policy_dir)


def question_bound_engine(engine: Any, tool: Any, questions: dict[str, str]) -> Any:
    """`engine` (any `agents.rl` rollout engine: HF or an OpenAI-compatible server) generating each prompt's
    responses with `tool` bound to that prompt's question (`SearchTool.bind`), so the retriever gets
    "{question} [SEP] {query}" during RL as in evaluation. The engine's tool sees only the query, hence one
    generation call per prompt.

    The result is an instance of a subclass of the engine's own class that shares the engine's state: its
    generation (`_generate`: HF `generate` or the server's completions) and `sync_weights` stay the engine's.
    """
    base = type(engine)

    class QuestionBoundEngine(base):  # type: ignore[valid-type, misc]  # a subclass of the engine's own class
        def continue_(self, states: list) -> None:
            groups: dict[str, list] = {}
            for state in states:
                groups.setdefault(state.prompt, []).append(state)
            try:
                for prompt, group in groups.items():
                    if prompt not in questions:
                        raise EmbedkitError(f"no question known for rollout prompt {prompt[:80]!r}")
                    self.tool = tool.bind(questions[prompt])
                    super().continue_(group)
            finally:
                self.tool = tool

    QuestionBoundEngine.__name__ = QuestionBoundEngine.__qualname__ = f"QuestionBound{base.__name__}"
    bound = object.__new__(QuestionBoundEngine)
    # One state, not a copy: what the engine counts or holds (weight syncs, rng, HTTP client) stays one thing.
    bound.__dict__ = engine.__dict__
    return bound


def _base_index(config: IterateConfig, out: Path) -> Path:
    """Index the corpus with the untrained base model once (kept in output_dir/base_index)."""
    from embedkit.data import count_documents, iter_documents
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import build_dense_index

    path = out / "base_index"
    if not (path / "manifest.json").exists():
        encoder = Encoder(EncoderConfig(model=config.train.base_model, query_prefix=config.train.query_prefix,
                                        passage_prefix=config.train.passage_prefix,
                                        batch_size=config.train.encode_batch_size))  # fmt: skip
        build_dense_index(iter_documents(config.corpus), encoder, path, overwrite=True, quiet=True,
                          total=count_documents(config.corpus), corpus=str(config.corpus))  # fmt: skip
    return path
