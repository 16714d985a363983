"""Read a folder that writers may swap at any moment, so that everything read comes from one state of it.

Writers never change a folder's files in place: they fill a new folder and rename it over the old one
(`embedkit.io.atomic_directory`). A reader that opens `manifest.json`, then `index.faiss`, then
`docstore.sqlite` by path can still get them from two states when a swap lands in between (a server's hot
reload did: answers with a third of the documents missing, and a false "index is damaged" in the log).

`read_consistent(path, read)` pins the folder with a directory file descriptor (while it is open, no other
folder can get its inode), notes the folder's identity and its manifest's, runs `read()` and looks again: if
`path` still names the same folder with the same manifest, every file `read()` opened came from that one state.
Otherwise the result is dropped and `read()` runs again on the new state. An error is reported only when it
happened on a state that did not change meanwhile, so a folder that was merely being replaced is never called
damaged. `read()` must open (not just locate) everything it needs: an open file stays readable after the
writer deletes the replaced folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from embedkit.errors import EmbedkitError
from embedkit.index.manifest import MANIFEST_NAME

#: How often `read()` is tried on a folder that keeps changing under it, and the pause after each try.
ATTEMPTS = 8
PAUSE_S = 0.005

T = TypeVar("T")


class FolderChangingError(EmbedkitError):
    """The folder was replaced during every attempt to read it (a writer updates it continuously)."""


@dataclass(frozen=True)
class FolderState:
    """Which folder a path names and which manifest file it holds: equal states hold the same files."""

    folder: tuple[int, int]
    manifest: tuple[int, int, int] | None

    @classmethod
    def of(cls, path: Path) -> FolderState | None:
        """The state `path` names now, or None while it names nothing (mid-swap, removed)."""
        try:
            folder = os.stat(path)
        except OSError:
            return None
        try:
            info = os.stat(path / MANIFEST_NAME)
            manifest = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:
            manifest = None
        return cls((folder.st_dev, folder.st_ino), manifest)


def _pin(path: Path) -> int | None:
    """A descriptor holding the folder `path` names now (None where folders cannot be opened, or it is gone)."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


def read_consistent(path: str | Path, read: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """`read()`'s result, with everything it opened under `path` taken from one state of the folder."""
    path = Path(path)
    for attempt in range(attempts):
        pin = _pin(path)
        try:
            # The state is noted after pinning: the pinned folder's inode cannot be reused while we look.
            before = FolderState.of(path)
            try:
                result = read()
            except Exception:
                if FolderState.of(path) == before or attempt == attempts - 1:
                    raise  # the same state failed, or the last try: a real problem, reported as it is
            else:
                if FolderState.of(path) == before:
                    return result
                del result  # opened across a swap: may mix two states
        finally:
            if pin is not None:
                os.close(pin)
        time.sleep(PAUSE_S * (attempt + 1))
    raise FolderChangingError(f"{path} was replaced {attempts} times while it was being opened (it is being "
                              "updated continuously); try again")
