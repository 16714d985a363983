"""Passage utility for Agentic-R: local (is the passage relevant to the current sub-query?) and global
(does the agent answer correctly when this passage is all it gets at this step?).

Local scorers (registry `LOCAL_SCORERS`):
- `llm_judge`: an LLM first infers the sub-answer of the current sub-query (reference: the question's gold
  answer and the passages retrieved at the step), then scores candidates listwise in batches of 10 on 0-100;
  scores are divided by 100. Unparseable or missing scores count as 0.
- `embedder` (proxy without an LLM): cosine between the sub-query and the passage under the current
  retriever's embedder, clipped to [0, 1].

Global scorers (registry `GLOBAL_SCORERS`):
- `rerun`: the agent is re-run from the step with only that passage injected; the final answer's exact match.
- `containment` (proxy): 1 when a gold answer occurs (normalised, on word boundaries) in the passage's title or
  text; yes/no golds never count, since those words say nothing about a passage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.llm import LLMBackend
from agents.retrieval import Passage
from agents.rl.registry import Registry
from agents.rl.rewards import extract_answer, normalize_answer
from agents.search_agent.agent import SearchAgent
from agents.search_agent.trajectory import Trajectory


@dataclass
class Step:
    """One search step of a trajectory with its candidate passages and their utilities."""

    trajectory: Trajectory
    turn: int  # index into trajectory.turns
    query: str  # the sub-query the agent wrote
    retriever_query: str  # the Agentic-R retriever input, "{question} [SEP] {query}"
    candidates: list[Passage]
    local: list[float] = field(default_factory=list)
    global_: list[float] = field(default_factory=list)
    sub_answer: str | None = None


LocalScorer = Callable[[Sequence[Step]], None]
GlobalScorer = Callable[[Sequence[Step]], None]
LOCAL_SCORERS: Registry[Callable[..., LocalScorer]] = Registry("local utility scorer")
GLOBAL_SCORERS: Registry[Callable[..., GlobalScorer]] = Registry("global utility scorer")


# -- local ----------------------------------------------------------------------------------------------------

SUB_ANSWER_PROMPT = (
    "A search agent is answering a multi-hop question step by step.\n"
    "Question: {question}\nFinal answer: {answer}\nCurrent search query: {query}\n"
    "Passages retrieved for this query:\n{passages}\n\n"
    "What is the short answer to the current search query? Reply only with <answer> short answer </answer>."
)
JUDGE_PROMPT = (
    "Rate how useful each passage is for answering the search query, on a scale from 0 (useless) to 100 "
    "(states the answer). The reference answer to the query is given to help you judge.\n"
    "Question: {question}\nSearch query: {query}\nReference answer to the query: {sub_answer}\n\n{passages}\n\n"
    "Reply with exactly one line per passage in the form [number] score, e.g. [1] 85."
)
SCORE_LINE_RE = re.compile(r"\[(\d+)\]\s*[:=\-]?\s*(\d{1,3})(?:\s*/\s*100)?")


def _listing(passages: Sequence[Passage], limit: int = 600) -> str:
    return "\n".join(f"[{i}] (Title: {p.title}) {' '.join(p.text.split())[:limit]}" for i, p in enumerate(passages, 1))


def parse_listwise_scores(text: str, count: int) -> list[float]:
    """`[i] score` lines → `count` scores in [0, 1]; missing entries are 0, values are clipped to 0-100."""
    scores = [0.0] * count
    for index, value in SCORE_LINE_RE.findall(text):
        i = int(index) - 1
        if 0 <= i < count:
            scores[i] = min(max(int(value), 0), 100) / 100.0
    return scores


@LOCAL_SCORERS.register("llm_judge")
def llm_judge(backend: LLMBackend, batch: int = 10, max_new_tokens: int = 160, **_: object) -> LocalScorer:
    def score(steps: Sequence[Step]) -> None:
        prompts = []
        for step in steps:
            shown = step.trajectory.turns[step.turn].passages
            prompts.append(SUB_ANSWER_PROMPT.format(
                question=step.trajectory.question, answer=" / ".join(step.trajectory.answers) or "(unknown)",
                query=step.query, passages=_listing([p.passage() for p in shown], 300) or "(none)"))  # fmt: skip
        replies = backend.generate(prompts, max_new_tokens=48, temperature=0.0, stop=None)
        for step, reply in zip(steps, replies, strict=True):
            step.sub_answer = extract_answer(reply + ("</answer>" if "<answer>" in reply and "</answer>" not in reply else "")) \
                or reply.strip()[:100] or "(unknown)"  # fmt: skip
        jobs: list[tuple[Step, int, str]] = []
        for step in steps:
            for start in range(0, len(step.candidates), batch):
                chunk = step.candidates[start : start + batch]
                jobs.append((step, start, JUDGE_PROMPT.format(
                    question=step.trajectory.question, query=step.query, sub_answer=step.sub_answer,
                    passages=_listing(chunk))))  # fmt: skip
        replies = backend.generate([p for _, _, p in jobs], max_new_tokens=max_new_tokens, temperature=0.0, stop=None)
        for step in steps:
            step.local = [0.0] * len(step.candidates)
        for (step, start, _), reply in zip(jobs, replies, strict=True):
            count = min(batch, len(step.candidates) - start)
            step.local[start : start + count] = parse_listwise_scores(reply, count)

    return score


@LOCAL_SCORERS.register("embedder")
def embedder_similarity(index, **_: object) -> LocalScorer:
    """Cosine under the index's own encoder; passage vectors come from the FAISS index when it can
    reconstruct them (Flat, HNSW), else they are encoded."""
    from embedkit.data import Document

    rows = {doc_id: row for row, doc_id in index.docstore.ids_by_row().items()}

    def passage_vectors(passages: Sequence[Passage]) -> np.ndarray:
        try:
            vectors = np.stack([index.faiss_index.reconstruct(int(rows[p.id])) for p in passages])
        except (KeyError, RuntimeError):
            vectors = index.encoder.encode_documents([Document(id=p.id, text=p.text, title=p.title) for p in passages])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def score(steps: Sequence[Step]) -> None:
        if not steps:
            return
        queries = index.encoder.encode_queries([s.query for s in steps])
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        for step, q in zip(steps, queries, strict=True):
            step.local = [float(x) for x in np.clip(passage_vectors(step.candidates) @ q, 0.0, 1.0)]

    return score


# -- global ---------------------------------------------------------------------------------------------------

def contains_answer(passage: Passage, answers: Sequence[str]) -> bool:
    haystack = f" {normalize_answer(passage.title + ' ' + passage.text)} "
    for answer in answers:
        needle = normalize_answer(answer)
        if needle and needle not in ("yes", "no") and f" {needle} " in haystack:
            return True
    return False


@GLOBAL_SCORERS.register("containment")
def containment(**_: object) -> GlobalScorer:
    def score(steps: Sequence[Step]) -> None:
        for step in steps:
            step.global_ = [float(contains_answer(p, step.trajectory.answers)) for p in step.candidates]

    return score


@GLOBAL_SCORERS.register("rerun")
def rerun(agent: SearchAgent, **_: object) -> GlobalScorer:
    """Exact match of the agent's final answer when the step's retrieval result is only that passage."""

    def score(steps: Sequence[Step]) -> None:
        probes = [agent.continue_with(s.trajectory, s.turn, [p]) for s in steps for p in s.candidates]
        agent.complete(probes)
        at = 0
        for step in steps:
            step.global_ = [float(p.em or 0.0) for p in probes[at : at + len(step.candidates)]]
            at += len(step.candidates)

    return score
