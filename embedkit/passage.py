"""The one passage type: what an index returns, what a retriever hands an agent, what training pairs hold.

    >>> from embedkit.passage import Passage
    >>> p = Passage.from_contents("d1", '"Aaron"\\nAaron is a prophet.', score=0.9)
    >>> p.title, p.text, p.contents
    ('Aaron', 'Aaron is a prophet.', 'Aaron\\nAaron is a prophet.')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved (or stored) passage: id, title, text, and its score and rank when it was retrieved."""

    id: str
    title: str = ""
    text: str = ""
    score: float = 0.0
    rank: int = 0

    @property
    def contents(self) -> str:
        """Search-R1 / pyserini ``contents``: title and text on separate lines (text alone without a title)."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    @classmethod
    def from_contents(cls, id: str, contents: str, *, score: float = 0.0, rank: int = 0) -> Passage:
        """Split a wiki-18 style ``contents`` (title on the first line, maybe quoted) into title and text."""
        title, sep, text = contents.partition("\n")
        if not sep:
            return cls(id=id, title="", text=contents, score=score, rank=rank)
        title = title.strip()
        if len(title) >= 2 and title[0] == title[-1] == '"':
            title = title[1:-1]
        return cls(id=id, title=title, text=text, score=score, rank=rank)
