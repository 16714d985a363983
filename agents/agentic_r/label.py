"""Label passage utility along agent trajectories and write Agentic-R training pairs.

    steps = collect_steps(trajectories, retriever, LabelConfig())          # top-20 candidates per search step
    pairs, stats = label(trajectories, retriever, LabelConfig(), agent=agent, judge=backend, index=index)
    record = rerun_policy(trajectories)      # the policy that produced them re-runs their steps
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agents.agentic_r.config import LabelConfig
from agents.agentic_r.pairs import TrainingPair, build_pairs
from agents.agentic_r.utility import GLOBAL_SCORERS, LOCAL_SCORERS, Step
from agents.llm import LLMBackend
from agents.retrieval import Retriever
from agents.search_agent.agent import SearchAgent
from agents.search_agent.resilient import ResilientRetriever
from agents.search_agent.trajectory import PolicyRecord, Trajectory
from embedkit.defaults import DEFAULT_BATCH_SIZE
from embedkit.errors import EmbedkitError

log = logging.getLogger(__name__)


def collect_steps(trajectories: Sequence[Trajectory], retriever: Retriever, config: LabelConfig,
                  *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Step]:  # fmt: skip
    """Every successful search step of trajectories with gold answers, with the current retriever's top-N
    candidates. Candidates are fetched with what the agent sent at that step (its recorded retriever input, as
    upstream's step2 does: the plain query in round 1) unless `config.candidate_template` is set; the training
    query is always `config.query_template`."""
    pending: list[Step] = []
    for trajectory in trajectories:
        if not trajectory.answers:
            continue  # no gold answer, no global utility
        for i, turn in enumerate(trajectory.turns):
            if turn.action == "search" and turn.query and turn.error is None:
                text = config.query_template.format(question=trajectory.question, query=turn.query)
                if config.candidate_template is not None:
                    fetch = config.candidate_template.format(question=trajectory.question, query=turn.query)
                else:
                    fetch = turn.retriever_query or turn.query
                pending.append(Step(trajectory=trajectory, turn=i, query=turn.query, retriever_query=text,
                                    candidates=[], candidate_query=fetch))  # fmt: skip
    robust = ResilientRetriever(retriever)
    steps: list[Step] = []
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        result = robust.retrieve([s.candidate_query for s in chunk], config.candidates)
        if result.error is not None:
            log.warning("skipping %d steps: %s", len(chunk), result.error)
            continue
        for step, passages in zip(chunk, result.passages, strict=True):
            step.candidates = passages
            steps.append(step)
    robust.close()
    return steps


def require_judge(config: LabelConfig, judge: LLMBackend | None) -> None:
    """Refuse the upstream local utility (`llm_judge`, the default) without a judge, before any work is done.

    The embedder's cosine is a stand-in for the judge, so it is never picked silently: it must be asked for."""
    if config.local == "llm_judge" and judge is None:
        raise EmbedkitError(
            "local utility 'llm_judge' (the default, as upstream) needs an LLM judge: pass --judge hf:PATH or "
            "--judge openai:URL (with --judge-model), or choose the embedding-similarity stand-in explicitly with "
            "--local embedder (label.local: embedder in a config)"
        )


def label(
    trajectories: Sequence[Trajectory],
    retriever: Retriever,
    config: LabelConfig,
    *,
    agent: SearchAgent | None = None,
    judge: LLMBackend | None = None,
    index: Any = None,
    chunk: int = 32,
    progress=None,
) -> tuple[list[TrainingPair], dict[str, Any]]:
    """Score every step's candidates (local + global utility) and build training pairs.

    `agent` is needed for `global_utility: rerun`, `judge` for `local: llm_judge`, and a dense `index`
    (the retriever's) for `local: embedder`. The stats and every pair record the scorers that ran
    (`local_utility`, `global_utility`), so a stand-in's output is never mistaken for the judge's.
    """
    require_judge(config, judge)
    if config.local == "embedder" and index is None:
        raise EmbedkitError("local utility 'embedder' needs the dense index of the current retriever")
    if config.global_utility == "rerun" and agent is None:
        raise EmbedkitError("global utility 'rerun' needs the agent; or use global_utility: containment")
    local = LOCAL_SCORERS.get(config.local)(
        backend=judge, index=index, batch=config.judge_batch, max_new_tokens=config.judge_max_new_tokens,
        judge_input=config.judge_input, passage_chars=config.judge_passage_chars,
        unparseable=config.judge_unparseable, sub_answers=config.sub_answers,
        sub_answer_max_new_tokens=config.sub_answer_max_new_tokens,
    )
    global_ = GLOBAL_SCORERS.get(config.global_utility)(agent=agent)
    steps = collect_steps(trajectories, retriever, config)
    if agent is not None and config.global_utility == "rerun":
        template = agent.config.query_template
        differ = [s for s in steps if s.trajectory.turns[s.turn].retriever_query not in
                  (None, template.format(question=s.trajectory.question, query=s.query))]  # fmt: skip
        if differ:
            log.warning("%d of %d steps were searched with another retriever input than the re-runs' "
                        "query_template %r (e.g. %r)", len(differ), len(steps), template,
                        differ[0].trajectory.turns[differ[0].turn].retriever_query)  # fmt: skip
    for part in _chunks(steps, chunk):
        global_(part)
        # The judge is the expensive part: only steps some candidate can pass are worth judging (the others
        # are skipped for EM 0 whatever their local scores).
        worth = [s for s in part if max(s.global_, default=0.0) > 0]
        local(worth)
        for step in part:
            if step.local is not None and len(step.local) != len(step.candidates):
                step.local = [0.0] * len(step.candidates)
        if progress is not None:
            progress(len(part))
    pairs, stats = build_pairs(steps, config)
    return pairs, {**stats, "local_utility": config.local, "global_utility": config.global_utility}


def _chunks(steps: Sequence[Step], size: int) -> list[list[Step]]:
    """About `size` steps at a time, never splitting a trajectory (its sub-answers are inferred in one call)."""
    chunks: list[list[Step]] = []
    for step in steps:
        if not chunks or (len(chunks[-1]) >= size and step.trajectory is not chunks[-1][-1].trajectory):
            chunks.append([])
        chunks[-1].append(step)
    return chunks


def rerun_policy(trajectories: Sequence[Trajectory], given: PolicyRecord | None = None, *,
                 allow_mismatch: bool = False) -> PolicyRecord:  # fmt: skip
    """The policy that re-runs steps for global utility: the one recorded in the trajectories (upstream
    re-runs the agent that produced them). A different `given` policy is refused unless `allow_mismatch`;
    trajectories without a record need `given`."""
    recorded = {t.policy.model_dump_json(): t.policy for t in trajectories if t.policy is not None}
    if len(recorded) > 1 and not (given is not None and allow_mismatch):
        names = "; ".join(sorted(p.describe() for p in recorded.values()))
        raise EmbedkitError(f"the trajectories come from several policies ({names}): label each policy's "
                            "trajectories separately")  # fmt: skip
    if not recorded:
        if given is None:
            raise EmbedkitError("the trajectories do not record the policy that produced them: name it with "
                                "--agent-llm (global utility re-runs steps with it)")  # fmt: skip
        log.warning("trajectories record no policy; re-running steps with %s", given.describe())
        return given
    if len(recorded) > 1 and given is not None:  # several policies: allowed above only with allow_mismatch
        return given
    (own,) = recorded.values()
    if given is None or given == own:
        return own
    if not allow_mismatch:
        raise EmbedkitError(f"the trajectories were produced by {own.describe()}, not {given.describe()}: "
                            "re-running their steps with another policy changes the global utility; drop "
                            "--agent-llm, or pass --allow-policy-mismatch")  # fmt: skip
    log.warning("re-running steps with %s, not %s that produced them", given.describe(), own.describe())
    return given
