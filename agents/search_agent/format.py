"""The Search-R1 text protocol: parse one model turn, render retrieved passages, wrap them in `<information>`.

    parse_action("<think>need X</think> <search> who is X </search>")   # Action("search", "who is X")
    render_passages(passages, "Doc {i}(Title: {title}) {text}")         # "Doc 1(Title: …) …\nDoc 2(Title: …) …"
    information_block(render_passages(passages, PASSAGE_TEMPLATE))      # "\n\n<information>Doc 1…</information>\n\n"

`INFORMATION_TEMPLATE` is the one template for the block injected after a search, shared by `SearchAgent`
(evaluation) and `agents.rl.rollout` (training), so both see the same token stream. It is the block
Search-R1's generation loop appends: two newlines, the tag, the stripped result, the closing tag, two newlines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from embedkit.passage import Passage

SEARCH_RE = re.compile(r"<search>(.*?)</search>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INFORMATION_OPEN, INFORMATION_CLOSE = "<information>", "</information>"
INFORMATION_TEMPLATE = "\n\n" + INFORMATION_OPEN + "{result}" + INFORMATION_CLOSE + "\n\n"
PASSAGE_TEMPLATE = "Doc {i}(Title: {title}) {text}"


@dataclass(frozen=True)
class Action:
    kind: Literal["search", "answer", "invalid"]
    content: str = ""


def restore_stop(text: str) -> str:
    """Backends cut generations *before* the stop string; put the closing tag back when a tag is open.

    Only the last open tag is closed, and exactly the stop string is appended, so the text is what the
    model generated ("<search> q " becomes "<search> q </search>").
    """
    at_search, at_answer = text.rfind("<search>"), text.rfind("<answer>")
    opened, close_tag = (at_search, "</search>") if at_search > at_answer else (at_answer, "</answer>")
    if opened != -1 and text.find(close_tag, opened) == -1:
        return text + close_tag
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


def render_passage(passage: Passage, index: int, template: str = PASSAGE_TEMPLATE) -> str:
    """One passage, e.g. `Doc 1(Title: Aaron) Aaron is …`; whitespace inside the text is collapsed."""
    return template.format(i=index, title=passage.title, text=" ".join(passage.text.split()), id=passage.id)


def render_passages(passages: Sequence[Passage], template: str = PASSAGE_TEMPLATE) -> str:
    """The result of one search as the model reads it: one rendered passage per line, "(no results)" if none."""
    if not passages:
        return "(no results)"
    return "\n".join(render_passage(p, i, template) for i, p in enumerate(passages, start=1))


def information_block(result: str) -> str:
    """`INFORMATION_TEMPLATE` around a search result (stripped, as Search-R1 does)."""
    return INFORMATION_TEMPLATE.format(result=result.strip())


def render_information(passages: Sequence[Passage], template: str = PASSAGE_TEMPLATE, *,
                       error: str | None = None) -> str:  # fmt: skip
    """The block injected after a search. A failed retrieval is shown to the model as such."""
    return information_block(f"(search failed: {error})" if error is not None else render_passages(passages, template))
