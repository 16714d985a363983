"""The Search-R1 text protocol: parse one model turn, render retrieved passages.

    parse_action("<think>need X</think> <search> who is X </search>")   # Action("search", "who is X")
    render_information(passages, "Doc {i}(Title: {title}) {text}")      # "\n<information>Doc 1(Title: …) …</information>\n"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agents.retrieval import Passage

SEARCH_RE = re.compile(r"<search>(.*?)</search>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INFORMATION_OPEN, INFORMATION_CLOSE = "<information>", "</information>"


@dataclass(frozen=True)
class Action:
    kind: Literal["search", "answer", "invalid"]
    content: str = ""


def restore_stop(text: str) -> str:
    """Backends cut generations *before* the stop string; put the closing tag back when a tag is open.

    Only the last open tag is closed, so "<search> q" becomes "<search> q </search>".
    """
    at_search, at_answer = text.rfind("<search>"), text.rfind("<answer>")
    opened, close_tag = (at_search, "</search>") if at_search > at_answer else (at_answer, "</answer>")
    if opened != -1 and text.find(close_tag, opened) == -1:
        return text.rstrip() + f" {close_tag}"
    return text


def parse_action(text: str) -> Action:
    """The action a model turn ends with: the first complete `<search>` or `<answer>` after the thinking.

    Whichever complete tag comes first wins (a model that searches and answers in one turn has searched);
    empty queries and output with neither tag are `invalid`.
    """
    search = SEARCH_RE.search(text)
    answer = ANSWER_RE.search(text)
    candidates = [m for m in (search, answer) if m is not None]
    if not candidates:
        return Action("invalid")
    first = min(candidates, key=lambda m: m.start())
    content = " ".join(first.group(1).split())
    if first is search:
        return Action("search", content) if content else Action("invalid")
    return Action("answer", content)


def render_passage(passage: Passage, index: int, template: str) -> str:
    return template.format(i=index, title=passage.title, text=" ".join(passage.text.split()), id=passage.id)


def render_information(passages: Sequence[Passage], template: str, *, error: str | None = None) -> str:
    """The block injected after a search. A failed retrieval is shown to the model as such."""
    if error is not None:
        body = f"(search failed: {error})"
    elif not passages:
        body = "(no results)"
    else:
        body = "\n".join(render_passage(p, i, template) for i, p in enumerate(passages, start=1))
    return f"\n\n{INFORMATION_OPEN}{body}{INFORMATION_CLOSE}\n\n"
