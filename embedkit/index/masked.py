"""`deleted.npy`: rows still inside a FAISS index but deleted (kinds that cannot remove vectors, e.g. HNSW),
masked at search time until `embedkit index compact`. Read here, and only here, with every check.

The deletion files of dense segments and of BM25 document-store parts (`seg-000000.del-000005.npy`) have the
same format: `save_deleted_rows` writes them, `load_deleted_rows` reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import IndexFormatError


def load_deleted_rows(path: Path, next_row: int | None = None) -> np.ndarray:
    """The masked rows `deleted.npy` lists (int64, unique, each below `next_row`); anything else is damage.

    Read without pickle: the file may come from a stranger's folder, and a pickled array would run code.
    """
    def damaged(reason: str) -> IndexFormatError:
        return IndexFormatError(f"index {path.parent} is damaged: {path} {reason}; rebuild the index (or compact it)")

    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":  # else numpy guesses a pickle and says so
                raise damaged("is not a .npy file")
            handle.seek(0)
            rows = np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise damaged(f"is not a saved array of row numbers ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(rows, np.ndarray) or rows.ndim != 1 or rows.dtype.kind not in "iu":
        shape = getattr(rows, "shape", "?")
        raise damaged(f"holds a {getattr(rows, 'dtype', type(rows).__name__)} array of shape {shape}, not a list "
                      "of row numbers")
    if rows.dtype.kind == "u" and len(rows) and rows.max() > np.iinfo(np.int64).max:
        raise damaged("lists a row number beyond any FAISS id")
    rows = rows.astype(np.int64)
    if len(rows) and (rows.min() < 0 or (next_row is not None and rows.max() >= next_row)):
        raise damaged(f"lists rows {rows.min()}..{rows.max()}, outside the index's rows 0..{(next_row or 1) - 1}")
    if len(np.unique(rows)) != len(rows):
        raise damaged("lists a row twice")
    return rows


def save_deleted_rows(path: Path, rows: np.ndarray) -> None:
    """Write sorted int64 `rows` as a deletion file (`load_deleted_rows` reads it back; no pickle)."""
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(rows, dtype=np.int64), allow_pickle=False)
