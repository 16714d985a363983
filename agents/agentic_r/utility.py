"""Passage utility for Agentic-R: local (is the passage relevant to the current sub-query?) and global
(does the agent answer correctly when this passage is all it gets at this step?).

Local scorers (registry `LOCAL_SCORERS`):
- `llm_judge` (the official step3-0 / step3-1 rules by default): an LLM first infers the sub-answer of every
  search query of a trajectory at once, from the whole trajectory and the gold answers ("Not Sure" means no
  reference; a reply with the wrong number of sub-answers gives the trajectory no references). Then it scores
  the candidates listwise, 10 per prompt, against the sub-query alone with a five-band 0-100 rubric, whole
  passages shown; scores are divided by 100. A reply that does not hold one integer per passage drops the
  step. `LabelConfig.judge_input`, `judge_passage_chars`, `judge_unparseable` and `sub_answers` select the
  earlier variants (question shown, passages cut, unparseable = 0, sub-answers per step from its passages).
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
from agents.rl.rewards import extract_answer, normalize_answer
from agents.search_agent.agent import SearchAgent
from agents.search_agent.trajectory import Trajectory
from embedkit.passage import Passage
from embedkit.registry import Registry


@dataclass
class Step:
    """One search step of a trajectory with its candidate passages and their utilities."""

    trajectory: Trajectory
    turn: int  # index into trajectory.turns
    query: str  # the sub-query the agent wrote
    retriever_query: str  # the training input, "{question} [SEP] {query}"
    candidates: list[Passage]
    candidate_query: str = ""  # what fetched the candidates (the agent's own retriever input by default)
    local: list[float] | None = field(default_factory=list)  # None: the judge's reply was unreadable (dropped)
    global_: list[float] = field(default_factory=list)
    sub_answer: str | None = None  # the judge's reference; None: no reference


LocalScorer = Callable[[Sequence[Step]], None]
GlobalScorer = Callable[[Sequence[Step]], None]
LOCAL_SCORERS: Registry[Callable[..., LocalScorer]] = Registry("local utility scorer")
GLOBAL_SCORERS: Registry[Callable[..., GlobalScorer]] = Registry("global utility scorer")


# -- local ----------------------------------------------------------------------------------------------------

SUB_ANSWERS_SYSTEM = (
    "You read the full record of a search agent's work on a question and work out, for each search query it "
    "sent, the short fact that query was after."
)
SUB_ANSWERS_PROMPT = (
    "The agent thinks inside <think> tags, sends search queries inside <search> tags and reads the results "
    "shown inside <information> tags, until it answers inside <answer> tags.\n\n"
    "Question: {question}\nCorrect answer(s): {answers}\n\nThe agent's record:\n{transcript}\n\n"
    "The record holds {n} search queries. For each of them, in order, give the short fact the query was meant "
    "to find; it must be consistent with the correct answer(s). When that cannot be worked out reliably for a "
    "query (typical when the agent's final answer is wrong), give Not Sure for it.\n"
    "Reply with exactly {n} items and nothing else, each wrapped as <sub-answer> ... </sub-answer>, separated "
    "by single spaces, e.g. <sub-answer> Paris </sub-answer> <sub-answer> Not Sure </sub-answer>."
)
STEP_SUB_ANSWER_PROMPT = (
    "A search agent is answering a multi-hop question step by step.\n"
    "Question: {question}\nFinal answer: {answer}\nCurrent search query: {query}\n"
    "Passages retrieved for this query:\n{passages}\n\n"
    "What is the short answer to the current search query? Reply only with <answer> short answer </answer>."
)
JUDGE_SYSTEM = "You judge how well passages answer a search query."
JUDGE_PROMPT = (
    "Give each passage below a utility score, an integer from 0 to 100, for how directly it answers the search "
    "query or holds the information the query needs.{reference_note}\n\n"
    "Score bands:\n"
    "- 81-100: answers the query fully, or contains exactly the answer the query needs.\n"
    "- 61-80: holds most of what is needed to answer the query; minor details may be missing.\n"
    "- 41-60: on the query's topic and covers part of what it asks, but is not a full answer.\n"
    "- 21-40: shares keywords with the query but is mainly about something else; of little value.\n"
    "- 0-20: unrelated to the query, or misleading.\n\n"
    "Read all {n} passages before scoring, so that the scores are consistent with one another.\n\n"
    "{question_line}Search query: {query}\n\nPassages:\n{passages}\n{reference}\n"
    "Reply with the {n} scores only: integers in passage order, separated by single spaces (for three "
    "passages, e.g.: 70 15 92). No other words."
)
SUB_ANSWER_RE = re.compile(r"<sub-answer>(.*?)</sub-answer>", re.IGNORECASE | re.DOTALL)
_TOKEN_TRIM = "\"'`,;."  # quotes around the list ("68 42 97") and separators; brackets are not scores


def _chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_listwise_scores(text: str, count: int) -> list[float] | None:
    """The first `count` whitespace-separated integers of a judge reply → scores in [0, 1] (clipped to 0-100);
    None when the reply does not start with `count` integers (the step is then dropped)."""
    tokens = text.split()
    if len(tokens) < count:
        return None
    scores: list[float] = []
    for token in tokens[:count]:
        token = token.strip(_TOKEN_TRIM)
        if not re.fullmatch(r"-?\d+", token):
            return None
        scores.append(min(max(int(token), 0), 100) / 100.0)
    return scores


def parse_sub_answers(text: str, count: int) -> list[str | None] | None:
    """`<sub-answer>` items of a reply: one per search query; "not sure" → None; None when the count differs."""
    found = [item.strip() for item in SUB_ANSWER_RE.findall(text)]
    if len(found) != count:
        return None
    return [None if not item or item.lower().strip(" .") == "not sure" else item for item in found]


def _judge_passage(passage: Passage, limit: int | None) -> str:
    text = passage.contents
    return text if limit is None else " ".join(text.split())[:limit]


def _listing(passages: Sequence[Passage], limit: int | None) -> str:
    return "\n".join(f"Passage [{i}]: {_judge_passage(p, limit)}" for i, p in enumerate(passages, 1))


def _search_position(trajectory: Trajectory, turn: int) -> int:
    """Index of turn `turn` among the trajectory's search turns."""
    return sum(1 for t in trajectory.turns[:turn] if t.action == "search")


def _sub_answers_from_trajectories(backend: LLMBackend, steps: Sequence[Step], max_new_tokens: int) -> None:
    trajectories: dict[int, Trajectory] = {}
    for step in steps:
        trajectories.setdefault(id(step.trajectory), step.trajectory)
    order = list(trajectories.values())
    prompts = [_chat(SUB_ANSWERS_SYSTEM, SUB_ANSWERS_PROMPT.format(
        question=t.question, answers=", ".join(f'"{a}"' for a in t.answers), transcript=t.transcript.strip(),
        n=len(t.searches))) for t in order]  # fmt: skip
    replies = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=None)
    parsed = {id(t): parse_sub_answers(r, len(t.searches)) for t, r in zip(order, replies, strict=True)}
    for step in steps:
        answers = parsed[id(step.trajectory)]
        step.sub_answer = None if answers is None else answers[_search_position(step.trajectory, step.turn)]


def _sub_answers_per_step(backend: LLMBackend, steps: Sequence[Step]) -> None:
    prompts = []
    for step in steps:
        shown = step.trajectory.turns[step.turn].passages
        prompts.append(STEP_SUB_ANSWER_PROMPT.format(
            question=step.trajectory.question, answer=" / ".join(step.trajectory.answers) or "(unknown)",
            query=step.query, passages=_listing(list(shown), 300) or "(none)"))  # fmt: skip
    replies = backend.generate(prompts, max_new_tokens=48, temperature=0.0, stop=None)
    for step, reply in zip(steps, replies, strict=True):
        closed = reply + ("</answer>" if "<answer>" in reply and "</answer>" not in reply else "")
        answer = extract_answer(closed) or reply.strip()[:100]
        step.sub_answer = None if not answer or answer.lower().strip(" .") == "not sure" else answer


@LOCAL_SCORERS.register("llm_judge")
def llm_judge(backend: LLMBackend, batch: int = 10, max_new_tokens: int = 160, *, judge_input: str = "query",
              passage_chars: int | None = None, unparseable: str = "drop", sub_answers: str = "trajectory",
              sub_answer_max_new_tokens: int = 256, **_: object) -> LocalScorer:  # fmt: skip
    def score(steps: Sequence[Step]) -> None:
        if not steps:
            return
        if sub_answers == "trajectory":
            _sub_answers_from_trajectories(backend, steps, sub_answer_max_new_tokens)
        elif sub_answers == "step":
            _sub_answers_per_step(backend, steps)
        jobs: list[tuple[Step, int, int]] = []
        prompts = []
        for step in steps:
            note = " A reference answer to the search query is given to help you judge." if step.sub_answer else ""
            reference = f"\nReference answer: {step.sub_answer}\n" if step.sub_answer else ""
            question = f"Question: {step.trajectory.question}\n" if judge_input == "question_and_query" else ""
            for start in range(0, len(step.candidates), batch):
                chunk = step.candidates[start : start + batch]
                jobs.append((step, start, len(chunk)))
                prompts.append(_chat(JUDGE_SYSTEM, JUDGE_PROMPT.format(
                    reference_note=note, n=len(chunk), question_line=question, query=step.query,
                    passages=_listing(chunk, passage_chars), reference=reference)))  # fmt: skip
        replies = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=None)
        for step in steps:
            step.local = [0.0] * len(step.candidates)
        for (step, start, count), reply in zip(jobs, replies, strict=True):
            scores = parse_listwise_scores(reply, count)
            if step.local is None:
                continue
            if scores is None:
                if unparseable == "drop":
                    step.local = None
                continue  # "zero": the batch keeps its zeros
            step.local[start : start + count] = scores

    return score


@LOCAL_SCORERS.register("embedder")
def embedder_similarity(index, **_: object) -> LocalScorer:
    """Cosine under the index's own encoder; passage vectors come from the index when it holds them exactly
    (its stored copy, or a Flat/HNSW/IVF-Flat FAISS index; any number of segments), else they are encoded."""
    from embedkit.data import Document

    rows = {doc_id: row for row, doc_id in index.docstore.ids_by_row().items()}

    def passage_vectors(passages: Sequence[Passage]) -> np.ndarray:
        found = [rows.get(p.id) for p in passages]
        if index.vectors_exact and all(row is not None for row in found):
            vectors = index.vectors(np.array(found, dtype=np.int64))
        else:
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
