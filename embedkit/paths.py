"""Where things live: the shared evaluation data and the default index folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the checkout (or $EMBEDKIT_SHARED_DATA); None when absent."""
    candidates = [os.environ.get("EMBEDKIT_SHARED_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def default_index_dir() -> Path:
    return Path(os.environ.get("EMBEDKIT_INDEX_DIR", "indexes"))
