"""Policies decide each agent turn. `LLMPolicy` asks any `LLMBackend`; `HeuristicPolicy` needs no model.

    policy = LLMPolicy(OpenAICompatibleBackend("http://127.0.0.1:8000", "qwen"))   # mode: AgentConfig.prompt_mode
    policy = HeuristicPolicy()          # deterministic two-hop baseline, documented below
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from agents.llm import LLMBackend
from agents.search_agent.config import AgentConfig
from agents.search_agent.trajectory import Trajectory
from embedkit.errors import EmbedkitError


@runtime_checkable
class Policy(Protocol):
    """One model turn (text ending in `</search>` or `</answer>`) for each running trajectory."""

    def act(self, trajectories: Sequence[Trajectory], config: AgentConfig) -> list[str]: ...


class LLMPolicy:
    """Ask an LLM backend to continue each trajectory until a stop string, in one of three prompt modes
    (`AgentConfig.prompt_mode`, or the legacy `chat=` flag, which wins when given):

    - `completion` (base models, completion endpoints, RL policies): prompt + transcript as one string,
      continued verbatim.
    - `chat` (instruction models behind a chat endpoint): the instruction is the first user message, each
      model turn an assistant message and each injected block the next user message.
    - `search_r1`: Search-R1's token stream — the chat template applied to the first user message only
      (with the generation prompt), then one assistant turn the model keeps continuing, every
      `<information>` block appended inside it. The backend must offer `chat_prefix(messages)`.
    """

    def __init__(self, backend: LLMBackend, *, chat: bool | None = None) -> None:
        self.backend = backend
        self.chat = chat
        self.record: Any = None  # how to rebuild this policy (a PolicyRecord, set by build_policy)
        self._prefixes: dict[str, str] = {}

    def mode(self, config: AgentConfig) -> str:
        if self.chat is None:
            return config.prompt_mode
        return "chat" if self.chat else "completion"

    def render(self, trajectory: Trajectory, config: AgentConfig | None = None) -> str | list[dict]:
        mode = self.mode(config or AgentConfig())
        if mode == "completion":
            return trajectory.prompt + trajectory.transcript
        if mode == "search_r1":
            prefix = self._prefixes.get(trajectory.prompt)
            if prefix is None:
                chat_prefix = getattr(self.backend, "chat_prefix", None)
                if chat_prefix is None:
                    raise EmbedkitError(f"{type(self.backend).__name__} cannot apply a chat template; "
                                        "the search_r1 prompt mode needs a backend with chat_prefix")  # fmt: skip
                prefix = chat_prefix([{"role": "user", "content": trajectory.prompt}])
                self._prefixes[trajectory.prompt] = prefix
            return prefix + trajectory.transcript
        messages = [{"role": "user", "content": trajectory.prompt}]
        for turn in trajectory.turns:
            messages.append({"role": "assistant", "content": turn.output})
            if turn.information.strip():
                messages.append({"role": "user", "content": turn.information.strip()})
        return messages

    def act(self, trajectories: Sequence[Trajectory], config: AgentConfig) -> list[str]:
        prompts: list[Any] = [self.render(t, config) for t in trajectories]
        return self.backend.generate(
            prompts, max_new_tokens=config.max_new_tokens, temperature=config.temperature, stop=list(config.stop)
        )


# ---------------------------------------------------------------------------------------------------------
# The deterministic policy. Every decision is a pure function of the question and the passages seen so far,
# so re-running a trajectory with one passage swapped (Agentic-R's global utility) is meaningful.
# ---------------------------------------------------------------------------------------------------------

STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being do does did has have had "
    "what which who whom whose when where why how that this these those it its as than then there their his her "
    "he she they them i you we our your not no yes same both also into over under between about after before "
    "during while many much more most one two first second name named called known".split()
)
YES_NO_START = frozenset(
    "is are was were do does did can could has have had will would should shall may might".split()
)
# Capitalised word sequences, allowing lower-case joiners inside ("Bank of America", "Leonardo da Vinci").
ENTITY_RE = re.compile(
    r"\b[A-Z][\w'’-]*(?:\s+(?:(?:of|the|and|de|da|del|von|van|la|le|du|for|on)\s+)*[A-Z0-9][\w'’-]*)*"
)
CHOICE_RE = re.compile(r"[,:]\s*(.+?)\s+or\s+(.+?)\s*\?*$")
YEAR_RE = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
NUMBER_RE = re.compile(r"\b\d[\d,.]*(?:\s+(?:million|billion|thousand|hundred))?\b")
DATE_RE = re.compile(
    r"\b(?:\d{1,2}\s+)?(?:January|February|March|April|May|June|July|August|September|October|November|December)"
    r"(?:\s+\d{1,2})?,?\s+\d{4}\b"
)
DATE_START_RE = re.compile(
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December|Monday|Tuesday|"
    r"Wednesday|Thursday|Friday|Saturday|Sunday)\b"
)
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def base_title(title: str) -> str:
    """"Kiss and Tell (1945 film)" → "Kiss and Tell"."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()


def is_yes_no(question: str) -> bool:
    first = words(question)[:1]
    return bool(first) and first[0] in YES_NO_START


def answer_type(question: str) -> str:
    q = question.lower()
    if re.search(r"\b(what|which) year\b|\bwhen\b|\bwhat date\b", q):
        return "date"
    if re.search(r"\bhow (many|much|old|long|tall|far|big|large)\b", q):
        return "number"
    return "entity"


def normalize_text(text: str) -> str:
    return " ".join(words(text))


def choice_options(question: str) -> list[str]:
    """The two options of "…, X or Y?" questions (answered by one of them), else []."""
    match = CHOICE_RE.search(question)
    if not match:
        return []
    options = [match.group(1).strip(" \"'"), match.group(2).strip(" \"'?")]
    return options if all(0 < len(o.split()) <= 8 for o in options) else []


def entities(text: str) -> list[str]:
    """Capitalised spans in order of appearance, with a leading sentence-initial stopword dropped."""
    found = []
    for match in ENTITY_RE.finditer(text):
        span = match.group(0).strip(" .,'’")
        parts = span.split()
        while parts and parts[0].lower() in STOPWORDS:
            parts = parts[1:]
        if parts:
            found.append(" ".join(parts))
    return found


def _novel(span: str, question_words: set[str]) -> bool:
    """A span adds something when one of its content words is not in the question."""
    span_words = content_words(span)
    return bool(span_words) and not span_words <= question_words


class HeuristicPolicy:
    """A deterministic two-hop search policy that needs no LLM.

    Turn 1: search the question itself.
    Turn 2: search the *bridge entity*: walking the turn-1 passages best first, their titles (without a
      parenthetical) and the capitalised spans of their texts, in order, that have a content word the question
      lacks, contain no digit, do not start with a month or weekday, and are not the title of a passage already
      shown — the first with two or more words, else the first such span.
    Turn 3 (or the answer turn after `max_turns` search rounds): answer with the best span —
      * questions starting with an auxiliary verb (is/was/did/…) are yes/no: answer "yes" (the majority class);
      * "…, X or Y?" questions are answered with one of the two options, scored like the spans below
        (the first option when neither occurs);
      * otherwise candidates are dates/years ("when", "what year"), numbers ("how many/much/old…") or
        capitalised spans (everything else) in the shown passages, excluding spans whose content words all
        occur in the question; each occurrence scores search_weight × 1/rank × (1 + overlap), where overlap
        counts the question's content words in the sentence, and search_weight is 2 for the
        second search and 1 for the first (the second hop usually holds the answer). The top total wins; ties
        go to the span seen first; "unknown" when there is no candidate.
    """

    def __init__(self, searches: int = 2) -> None:
        self.searches = searches

    def act(self, trajectories: Sequence[Trajectory], config: AgentConfig) -> list[str]:
        return [self.decide(t, config) for t in trajectories]

    def decide(self, trajectory: Trajectory, config: AgentConfig) -> str:
        done = trajectory.searches
        last_turn = len(trajectory.turns) >= config.max_turns  # the answer turn after max_turns search rounds
        if not done and not last_turn:
            return f"<think>I will search for the question first.</think>\n<search> {trajectory.question} </search>"
        if len(done) < self.searches and not last_turn:
            bridge = self.bridge_entity(trajectory)
            if bridge:
                return (f"<think>The passages mention {bridge}; I will look it up.</think>\n"
                        f"<search> {bridge} </search>")
        answer = self.best_span(trajectory)
        return f"<think>Answering from the passages.</think>\n<answer> {answer} </answer>"

    def bridge_entity(self, trajectory: Trajectory) -> str | None:
        question_words = content_words(trajectory.question)
        shown_titles = {base_title(p.title).lower() for turn in trajectory.searches for p in turn.passages}
        first = trajectory.searches[0].passages if trajectory.searches else []
        spans = [span for passage in first for span in [base_title(passage.title), *entities(passage.text)]]
        spans = [s for s in spans if s and _novel(s, question_words) and s.lower() not in shown_titles
                 and not DATE_START_RE.match(s) and not any(ch.isdigit() for ch in s)]  # fmt: skip
        # Multi-word names first: single capitalised words are often adjectives ("American") or months.
        return next((s for s in spans if len(s.split()) >= 2), spans[0] if spans else None)

    def best_span(self, trajectory: Trajectory) -> str:
        question = trajectory.question
        if is_yes_no(question):
            return "yes"
        options = choice_options(question)
        kind = answer_type(question)
        question_words = content_words(question)
        if options:
            question_words -= {w for option in options for w in content_words(option)}
        scores: dict[str, float] = defaultdict(float)
        order: dict[str, int] = {}
        searches = trajectory.searches
        for s, turn in enumerate(searches):
            search_weight = 2.0 if s >= 1 else 1.0
            for rank, passage in enumerate(turn.passages, start=1):
                sentences = [base_title(passage.title)] + SENTENCE_RE.split(passage.text)
                for sentence in sentences:
                    overlap = len(content_words(sentence) & question_words)
                    for span in options or self._candidates(sentence, kind):
                        if options and normalize_text(span) not in normalize_text(sentence):
                            continue
                        if not _novel(span, question_words):
                            continue
                        scores[span] += search_weight / rank * (1 + overlap)
                        order.setdefault(span, len(order))
        if not scores:
            return options[0] if options else "unknown"
        return max(scores, key=lambda span: (scores[span], -order[span]))

    @staticmethod
    def _candidates(sentence: str, kind: str) -> list[str]:
        if kind == "date":
            return DATE_RE.findall(sentence) + YEAR_RE.findall(sentence)
        if kind == "number":
            return [m.group(0) for m in NUMBER_RE.finditer(sentence) if not YEAR_RE.fullmatch(m.group(0))]
        return entities(sentence)
