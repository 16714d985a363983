"""Refresh a dense index for an updated model: `embedkit.index.lifecycle.reencode_index`, re-exported here
because BOOM users look for it beside the merge that made the model."""

from __future__ import annotations

from embedkit.index.lifecycle import reencode_index

__all__ = ["reencode_index"]
