"""When an update also merges segments: one policy for dense and BM25 index folders.

An update (`embedkit index add/remove`) leaves a new segment or new deletions behind. After it commits, the
policy recorded in the index's manifest says whether merging is due (`embedkit index merge-policy` sets it;
`embedkit index compact` always merges everything, whatever the policy):

- `max_segments`: more segments than this is due. None: no limit on the count.
- `max_deleted_fraction`: more than this share of the index's indexed rows deleted (or replaced) is due,
  counted over the whole index, as Lucene's `TieredMergePolicy.setDeletesPctAllowed` counts. 0: any deletion
  is due. None: deletions never make a merge due.
- both None is `mode == "never"`: only `embedkit index compact` merges. A rule set again after "never" starts
  from the defaults (10 segments, 0.25).

Each kind does what its backend can:

- **dense** merges only the segments chosen (`next_merge`): too many segments, the adjacent run with the
  fewest indexed rows that brings the count back to `max_segments` is rewritten as one; too many deleted rows,
  the segment with the highest deleted share is rewritten without them, then the next, until the index is
  back within the limit. Other segments' files are untouched.
- **BM25** (bm25s, and Lucene through pyserini's `forceMerge(1)`) can only compact the whole index: anything
  due (`due`) compacts it, which also drops every deleted document. `max_deleted_fraction=0` keeps pyserini's
  scores those of a rebuild (Lucene's term statistics count deleted documents until they are merged away),
  at the cost of a full merge after every removal.

Manifests written before this model convert on load: dense ones recorded `{"mode": "auto"|"never", ...}`
("never" becomes both rules off; an "auto" policy's per-segment deleted fraction is read as this index-wide
one), BM25 ones `{"max_segments": ..., "max_deleted_fraction": ...}` with None for an off rule.

>>> policy = MergePolicy(max_segments=3, max_deleted_fraction=0.25)
>>> policy.due(segments=4, documents=100, deleted=0)            # BM25: compact the whole index
True
>>> policy.next_merge([(80, 0), (5, 0), (4, 0), (10, 0)])         # dense: the smallest neighbours
[1, 2]
>>> policy.next_merge([(80, 30), (10, 1)])                        # 31 of 90 rows deleted: the worst segment
[0]
>>> MergePolicy.model_validate({"mode": "never", "max_segments": 10, "max_deleted_fraction": 0.5}).mode
'never'
>>> policy.with_changes(max_segments=None).describe()
'auto: merge when more than 25% of the indexed rows are deleted'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

Mode = Literal["auto", "never"]

#: (indexed rows, deleted rows) of one segment, in the index's row order; indexed rows count the deleted ones.
SegmentCounts = tuple[int, int]

DEFAULT_MAX_SEGMENTS = 10
DEFAULT_MAX_DELETED_FRACTION = 0.25


class MergePolicy(BaseModel):
    """When an update of an index also merges its segments (the module docstring is the manual)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_segments: int | None = Field(DEFAULT_MAX_SEGMENTS, ge=1,
                                     description="more segments than this: a merge is due (None: no limit)")
    max_deleted_fraction: float | None = Field(
        DEFAULT_MAX_DELETED_FRACTION, ge=0, le=1,
        description="more than this share of the index's indexed rows deleted: a merge is due (None: no limit)")

    @model_validator(mode="before")
    @classmethod
    def _convert_old_forms(cls, data: Any) -> Any:
        # `mode` is derived from the rules (see `mode`); dense manifests before this model stored it as a field.
        if not isinstance(data, dict) or "mode" not in data:
            return data
        data = dict(data)
        mode = data.pop("mode")
        if mode == "never":
            return {"max_segments": None, "max_deleted_fraction": None}
        if mode != "auto":
            raise ValueError(f"mode {mode!r} is not a merge policy mode (auto or never)")
        if data.get("max_segments", 0) is None and data.get("max_deleted_fraction", 0) is None:
            raise ValueError("mode 'auto' with both rules off (null) would never merge: give a rule or mode 'never'")
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mode(self) -> Mode:
        """"never" when both rules are off: only `embedkit index compact` merges."""
        return "never" if self.max_segments is None and self.max_deleted_fraction is None else "auto"

    @classmethod
    def never(cls) -> MergePolicy:
        """Both rules off: updates never merge."""
        return cls(max_segments=None, max_deleted_fraction=None)

    def too_many_segments(self, segments: int) -> bool:
        return self.max_segments is not None and segments > self.max_segments

    def too_many_deleted(self, documents: int, deleted: int) -> bool:
        """`deleted` of `documents` indexed rows (the whole index) is more than the policy tolerates."""
        return (self.max_deleted_fraction is not None and deleted > 0
                and deleted > self.max_deleted_fraction * max(documents, 1))

    def due(self, segments: int, documents: int, deleted: int) -> bool:
        """True when an index of `segments` segments, `documents` indexed rows of which `deleted` are deleted,
        should merge now (BM25 compacts the whole index)."""
        return self.too_many_segments(segments) or self.too_many_deleted(documents, deleted)

    def next_merge(self, segments: Sequence[SegmentCounts]) -> list[int] | None:
        """Positions of the adjacent segments to rewrite as one next (one position: rewrite it without its
        deleted rows), or None when nothing is due. Ask again after each merge: counts change."""
        if self.too_many_segments(len(segments)):
            assert self.max_segments is not None
            width = len(segments) - self.max_segments + 1
            sizes = [documents for documents, _ in segments]
            # Fewest rows rewritten; among equal runs the newest, which holds the smallest, latest segments.
            start = min(range(len(segments) - width + 1), key=lambda i: (sum(sizes[i : i + width]), -i))
            return list(range(start, start + width))
        if self.too_many_deleted(sum(d for d, _ in segments), sum(x for _, x in segments)):
            # The highest deleted share first: the most rows dropped per row rewritten.
            candidates = [i for i, (documents, deleted) in enumerate(segments) if deleted > 0 and documents > 0]
            return [max(candidates, key=lambda i: (segments[i][1] / segments[i][0], segments[i][1], -i))]
        return None

    def with_changes(self, mode: Mode | None = None, **limits: int | float | None) -> MergePolicy:
        """This policy with `mode` and the given limits (None: that rule off). A rule given to a policy that is
        "never" starts from the defaults; "never" with a limit is refused (ValueError)."""
        unknown = set(limits) - {"max_segments", "max_deleted_fraction"}
        if unknown:
            raise ValueError(f"not a merge policy setting: {', '.join(sorted(unknown))}")
        if mode == "never":
            if limits:
                raise ValueError(f"merge policy 'never' turns every rule off; it cannot go with "
                                 f"{', '.join(sorted(limits))}")
            return MergePolicy.never()
        base = self if self.mode == "auto" else MergePolicy()
        return MergePolicy.model_validate({"max_segments": base.max_segments,
                                           "max_deleted_fraction": base.max_deleted_fraction, **limits})

    def describe(self) -> str:
        """One line for `embedkit index merge-policy` and reports."""
        if self.mode == "never":
            return "never: updates do not merge; only `embedkit index compact` does"
        rules = []
        if self.max_segments is not None:
            rules.append(f"there are more than {self.max_segments} segments")
        if self.max_deleted_fraction is not None:
            rules.append(f"more than {self.max_deleted_fraction * 100:g}% of the indexed rows are deleted"
                         if self.max_deleted_fraction else "any indexed row is deleted")
        return "auto: merge when " + " or ".join(rules)


__all__ = ["DEFAULT_MAX_DELETED_FRACTION", "DEFAULT_MAX_SEGMENTS", "MergePolicy", "SegmentCounts"]
