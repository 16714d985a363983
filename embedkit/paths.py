"""Where things live: the shared evaluation data, the default index folder and the cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """$EMBEDKIT_SHARED_DATA, else `../shared/data` as the docs write it (beside the folder commands run in),
    else beside the checkout (a command run from elsewhere); None when absent."""
    candidates = [os.environ.get("EMBEDKIT_SHARED_DATA"), Path.cwd().parent / "shared" / "data",
                  REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def default_index_dir() -> Path:
    return Path(os.environ.get("EMBEDKIT_INDEX_DIR", "indexes"))


def cache_dir() -> Path:
    """Where embedkit keeps files it can rebuild (exported ONNX graphs): $EMBEDKIT_CACHE, else the XDG cache."""
    explicit = os.environ.get("EMBEDKIT_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedkit"
