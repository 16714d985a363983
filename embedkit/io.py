"""Crash-safe writes of files and folders: build under a temporary name beside the target, then swap it in.

Files: `atomic_write(path)`. Folders (index folders, model folders): `atomic_directory(path, marker=...)`::

    from embedkit.io import atomic_directory

    with atomic_directory("indexes/mine", overwrite=True, marker="manifest.json", what="embedkit index") as tmp:
        (tmp / "data.bin").write_bytes(payload)      # fill the temporary folder
        (tmp / "manifest.json").write_text(manifest) # …and it replaces indexes/mine when the block ends
    # an exception inside the block removes the temporary folder and leaves indexes/mine as it was

`atomic_directory` owns everything about replacing a folder:

- **Overwrite checks.** An existing folder is replaced only with `overwrite=True`, and only when it holds the
  `marker` file (a file every output of that writer has: `manifest.json`, `config.json`, `trainer_state.pt`),
  so `--overwrite` cannot delete a user's folder or a plain file by mistake. `marker` is required (keyword-only,
  no default): a writer cannot forget to say what proves a folder is its own.
- **Locking** by the *real* path (symlinks resolved): a second writer of the same folder, through any path or
  symlink, waits (`folder_lock`), and after `LOCK_NOTICE_S` says on stderr who holds the lock (pid, command
  line, since when; the holder records itself in the lock file). Updates that read the old folder take the
  lock first (it is re-entrant). A folder that cannot be written (read-only file system, no permission) is an
  `EmbedkitError` naming it (`FolderNotWritableError`), not an `OSError` traceback.
- **The swap**, beside the real folder (a symlink stays a symlink pointing at the new contents)::

      NAME.tmp-PID-X  (being filled)  --fsync, rename-->  NAME.new-PID-X  (complete)
      NAME  --rename-->  NAME.old-PID-X;   NAME.new-PID-X  --rename-->  NAME;   fsync parent;  remove NAME.old-PID-X

- **Durability.** Every file and folder of the new tree is fsynced before the `.new` rename and the parent
  folder after each rename, so a completed write survives a power cut.
- **Recovery and sweeping** (`recover_folder`, run by every writer before it starts; `recover_if_interrupted`,
  `recover_path` and `recover_children` for readers of index, model and checkpoint folders). The rule: if
  `NAME` is missing and a complete `NAME.new-*` exists, it is renamed to `NAME` (roll forward: the write had
  finished); else if `NAME` is missing and a `NAME.old-*` exists, it is renamed back (roll back). Then every
  remaining `NAME.tmp-*`, `NAME.new-*` and `NAME.old-*` is removed: a `.tmp` was never finished, a `.new`
  beside an existing `NAME` never replaced it, an `.old` is the state already replaced. A reader that cannot write (read-only file system) leaves leftovers beside an existing `NAME` and reads on;
  a missing `NAME` it cannot restore is an `EmbedkitError` that says which leftover to rename.
- **Disk full** while filling (ENOSPC, EDQUOT, EFBIG, SQLite's "disk is full") becomes an `EmbedkitError`
  naming the folder; the old folder is untouched.

`EMBEDKIT_CRASH_AT=<step>` (one of `SWAP_STEPS`) makes the process exit abruptly at that step; the
fault-injection tests use it to check recovery after a crash at every point of the sequence.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from embedkit.errors import EmbedkitError
from embedkit.locks import (
    NOT_WRITABLE_ERRNOS,
    FolderNotWritableError,
    folder_lock,
    held_by_this_thread,
    not_writable,
    real_folder,
)

TMP_MARK = ".tmp-"
CRASH_ENV = "EMBEDKIT_CRASH_AT"
#: Points of the folder write/swap sequence where `EMBEDKIT_CRASH_AT` can kill the process.
SWAP_STEPS = (
    "filled",          # the temporary folder is filled, nothing synced yet
    "synced",          # its files and folders are fsynced
    "committed",       # renamed NAME.tmp-* -> NAME.new-* (complete)
    "old-moved",       # NAME renamed away to NAME.old-*
    "new-moved",       # NAME.new-* renamed to NAME
    "parent-synced",   # the parent folder is fsynced
    "swept",           # NAME.old-* removed (the write is over)
)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?P<state>tmp|new|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


def crash_point(step: str) -> None:
    """Exit at once (no cleanup, like SIGKILL) when `EMBEDKIT_CRASH_AT` names this step (fault-injection tests)."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write a file atomically: readers see the old file or the complete new one, never a partial one."""
    path = Path(path)
    if path.is_dir():
        raise EmbedkitError(f"{path} is a folder; give a file name to write")
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = open(tmp, mode, encoding=None if "b" in mode else "utf-8")
    except OSError as error:
        if error.errno in NOT_WRITABLE_ERRNOS:  # read-only file system, no permission
            raise not_writable(error, path) from None
        raise
    try:
        with opened as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise EmbedkitError(f"no space left while writing {path} ({error.strerror}); nothing was changed") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


# --- recovery ---------------------------------------------------------------------------------------------


def leftovers(path: str | Path) -> dict[str, list[Path]]:
    """Temporary (`tmp`), complete-but-not-swapped (`new`) and replaced (`old`) siblings of a folder."""
    real = real_folder(path)
    found: dict[str, list[Path]] = {"tmp": [], "new": [], "old": []}
    try:
        entries = list(os.scandir(real.parent))
    except OSError:  # a missing or unreadable parent holds no leftovers we could act on
        return found
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == real.name:
            found[match["state"]].append(real.parent / entry.name)
    for paths in found.values():
        paths.sort(key=_mtime, reverse=True)  # newest first
    return found


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def recover_folder(path: str | Path) -> str | None:
    """Finish or undo an interrupted swap of `path` and sweep leftovers (see the module docstring for the rule).

    Takes the folder's lock. Returns "rolled forward", "rolled back" or None (nothing to restore).
    """
    real = real_folder(path)
    with folder_lock(real):
        return _recover_locked(real)


def _recover_locked(real: Path) -> str | None:
    found = leftovers(real)
    outcome = None
    if not real.exists() and not real.is_symlink():
        source, outcome = ((found["new"].pop(0), "rolled forward") if found["new"] else
                           (found["old"].pop(0), "rolled back") if found["old"] else (None, None))
        if source is not None:
            try:
                os.replace(source, real)
            except OSError as error:
                if error.errno in NOT_WRITABLE_ERRNOS:
                    raise not_writable(error, real) from None
                raise
            fsync_folder(real.parent)
    for paths in found.values():
        for leftover in paths:
            _remove(leftover)
    return outcome


def recover_if_interrupted(path: str | Path) -> None:
    """For readers: repair a folder left mid-swap by a killed writer; never waits for a running writer.

    When `path` exists, leftovers are swept only if no writer holds the lock, and not at all when the folder
    cannot be written (a read-only file system: the reader reads on, leftovers stay for a later writer). When
    it is missing but an interrupted swap left `.new`/`.old` siblings, waits for the lock (a live swap takes
    milliseconds) and recovers; if that is impossible (read-only), raises an `EmbedkitError` that says what to
    rename.
    """
    real = real_folder(path)
    found = leftovers(real)
    if not any(found.values()) or held_by_this_thread(real):  # our own leftovers may be live work
        return
    try:
        if real.exists():
            with folder_lock(real, blocking=False) as held:
                if held:
                    _recover_locked(real)
        elif found["new"] or found["old"]:
            recover_folder(real)
    except FolderNotWritableError as error:
        candidates = found["new"] or found["old"]
        if real.exists() or not candidates:
            return
        source = candidates[0]
        state = "the finished new version" if found["new"] else "the version before the write"
        raise FolderNotWritableError(
            f"{path} is missing: a write of it was interrupted, and {source.name} beside it (holding {state}) "
            f"cannot be renamed to {real.name} ({error.reason}). "
            f"Run any embedkit command on it where it is writable, or rename {source} to {real}",
            reason=error.reason,
        ) from None


def recover_path(path: str | Path) -> None:
    """For readers of a model or checkpoint path: `recover_if_interrupted` on it and every folder above it.

    A path that readers are given may lie inside the folder that was written as one (`retriever/model` of an
    Agentic-R output, `step-N/policy` of an RL checkpoint), so the folders above it are checked too, outermost
    first (one directory listing each; nothing is touched where no leftovers are found). A hub id is checked
    as a relative path and finds nothing.
    """
    real = real_folder(path)
    for folder in [*reversed(real.parents[:-1]), real]:  # parents[-1] is the root, which has no siblings
        recover_if_interrupted(folder)


def recover_children(folder: str | Path) -> None:
    """For readers that list a folder of outputs (RL `checkpoints/step-N`, CoCoA `checkpoint-*`): recover every
    child an interrupted write left mid-swap, so a missing one is restored before the listing."""
    try:
        names = {match["name"] for entry in os.scandir(folder) if (match := _LEFTOVER.match(entry.name))}
    except OSError:
        return
    for name in sorted(names):
        recover_if_interrupted(Path(folder) / name)


def _remove(path: Path) -> None:
    # Sweeping is housekeeping: what cannot be removed now is removed by a later writer.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# --- the folder writer ------------------------------------------------------------------------------------


def check_replaceable(path: str | Path, *, overwrite: bool, marker: str, what: str = "folder") -> None:
    """Refuse to write `path` when that would destroy something that is not ours to replace.

    A missing path or an empty folder is fine; an existing `what` needs `overwrite`, and only a folder holding
    the `marker` file counts as a `what` (anything else is refused whatever `overwrite` says).
    """
    path = Path(path)
    real = real_folder(path)
    if not real.exists():
        return
    shown = f"{path}" if real == path.absolute() else f"{path} (-> {real})"
    if not real.is_dir():
        raise EmbedkitError(f"{shown} is a file, not {_a(what)}; refusing to replace it (choose another path)")
    if not any(real.iterdir()):
        return
    if not (real / marker).is_file():
        raise EmbedkitError(
            f"{shown} exists and is not {_a(what)} (it has no {marker}); refusing to replace it even with "
            "--overwrite, which only replaces a previous output. Choose another path or remove the folder yourself"
        )
    if not overwrite:
        raise EmbedkitError(f"{shown} already exists (use --overwrite to replace it)")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def fsync_folder(path: Path) -> None:
    """fsync a folder's entry list (so renames and new files in it survive a power cut)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (bottom-up), then `root` itself."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            file_path = os.path.join(folder, name)
            if os.path.islink(file_path):
                continue
            fd = os.open(file_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(Path(folder))


def is_disk_full(error: BaseException) -> bool:
    """True for the ways "no space left" surfaces: OSError errnos, SQLite's message, FAISS/C++ error texts."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error).lower()
    # SQLite reports a write refused by the OS (EFBIG, EIO) as "disk I/O error", without the errno.
    return any(sign in text for sign in ("disk is full", "no space left", "file too large", "disk quota exceeded",
                                         "disk i/o error"))


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, marker: str, overwrite: bool = False,
                     what: str = "folder") -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path`, on error it is removed.

    `marker` is required: a file every output of this writer holds (e.g. "manifest.json", "config.json",
    "trainer_state.pt"), the proof that an existing folder is an earlier output of the same kind (`what` names
    them in errors). `overwrite` allows replacing such a folder; a non-empty folder without the marker is never
    replaced. The folder's lock is held for the whole block. See the module docstring for the swap, recovery
    rule and durability guarantees.
    """
    path = Path(path)
    real = real_folder(path)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in NOT_WRITABLE_ERRNOS:
            raise not_writable(error, real) from None
        raise
    with folder_lock(real):
        _recover_locked(real)
        check_replaceable(path, overwrite=overwrite, marker=marker, what=what)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = real.with_name(f"{real.name}.tmp-{token}")
        new = real.with_name(f"{real.name}.new-{token}")
        try:
            tmp.mkdir()
        except OSError as error:
            if error.errno in NOT_WRITABLE_ERRNOS:  # the lock file may exist and be ours while the folder is not
                raise not_writable(error, real) from None
            raise
        try:
            try:
                yield tmp
            except BaseException as error:
                if isinstance(error, Exception) and is_disk_full(error):
                    raise EmbedkitError(f"cannot write {path}: no space left on the device, or it failed ({error}); "
                                        f"the existing {what} (if any) is unchanged") from None
                raise
            crash_point("filled")
            try:
                fsync_tree(tmp)
            except OSError as error:
                if is_disk_full(error):
                    raise EmbedkitError(f"cannot write {path}: no space left on the device, or it failed ({error}); "
                                        f"the existing {what} (if any) is unchanged") from None
                raise
            crash_point("synced")
            check_replaceable(path, overwrite=overwrite, marker=marker, what=what)  # still ours to replace?
            os.replace(tmp, new)
            fsync_folder(real.parent)
            crash_point("committed")
            old = None
            try:
                if real.exists():
                    old = real.with_name(f"{real.name}.old-{token}")
                    os.replace(real, old)
                    crash_point("old-moved")
                os.replace(new, real)
            except BaseException:
                if old is not None and old.exists() and not real.exists():
                    os.replace(old, real)  # put the old folder back rather than leave nothing at the path
                raise
            crash_point("new-moved")
            fsync_folder(real.parent)
            crash_point("parent-synced")
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            crash_point("swept")
        finally:
            for leftover in (tmp, new):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
