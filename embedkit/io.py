"""Crash-safe writes of files and folders: build under a temporary name beside the target, then swap it in.

Files: `atomic_write(path)`. Folders (index folders, model folders): `atomic_directory(path)`::

    from embedkit.io import atomic_directory

    with atomic_directory("indexes/mine", overwrite=True, marker="manifest.json", what="embedkit index") as tmp:
        (tmp / "data.bin").write_bytes(payload)      # fill the temporary folder
        (tmp / "manifest.json").write_text(manifest) # …and it replaces indexes/mine when the block ends
    # an exception inside the block removes the temporary folder and leaves indexes/mine as it was

`atomic_directory` owns everything about replacing a folder:

- **Overwrite checks.** An existing folder is replaced only with `overwrite=True`, and (when `marker` is given)
  only when it holds that file, so `--overwrite` cannot delete a corpus folder or a plain file by mistake.
- **Locking** by the *real* path (symlinks resolved): a second writer of the same folder, through any path or
  symlink, waits (`folder_lock`). Updates that read the old folder take the lock first (it is re-entrant).
- **The swap**, beside the real folder (a symlink stays a symlink pointing at the new contents)::

      NAME.tmp-PID-X  (being filled)  --fsync, rename-->  NAME.new-PID-X  (complete)
      NAME  --rename-->  NAME.old-PID-X;   NAME.new-PID-X  --rename-->  NAME;   fsync parent;  remove NAME.old-PID-X

- **Durability.** Every file and folder of the new tree is fsynced before the `.new` rename and the parent
  folder after each rename, so a completed write survives a power cut.
- **Recovery and sweeping** (`recover_folder`, run by every writer before it starts and by readers that find
  leftovers). The rule: if `NAME` is missing and a complete `NAME.new-*` exists, it is renamed to `NAME` (roll
  forward: the write had finished); else if `NAME` is missing and a `NAME.old-*` exists, it is renamed back
  (roll back). Then every remaining `NAME.tmp-*`, `NAME.new-*` and `NAME.old-*` is removed: a `.tmp` was never
  finished, a `.new` beside an existing `NAME` never replaced it, an `.old` is the state already replaced.
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
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from embedkit.errors import EmbedkitError

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
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


def real_folder(path: str | Path) -> Path:
    """The folder a path really names: symlinks (of the folder or its parents) resolved, even when missing."""
    return Path(os.path.realpath(Path(path).expanduser()))


# --- locking ----------------------------------------------------------------------------------------------

_held_lock = threading.Lock()
_held: dict[Path, tuple[int, int, int]] = {}  # real path -> (owning thread id, fd, depth)


def lock_path(path: str | Path) -> Path:
    real = real_folder(path)
    return real.with_name(f".{real.name}.lock")


@contextlib.contextmanager
def folder_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock of the folder `path` really names (re-entrant in one thread).

    Yields True when the lock is held; with `blocking=False` yields False instead of waiting when another
    process (or thread) holds it.
    """
    import fcntl

    real = real_folder(path)
    me = threading.get_ident()
    with _held_lock:
        current = _held.get(real)
        if current is not None and current[0] == me:
            _held[real] = (me, current[1], current[2] + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield True
        finally:
            with _held_lock:
                owner, fd, depth = _held[real]
                _held[real] = (owner, fd, depth - 1)
        return
    target = lock_path(real)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        with _held_lock:
            _held[real] = (me, fd, 1)
        try:
            yield True
        finally:
            with _held_lock:
                _held.pop(real, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- recovery ---------------------------------------------------------------------------------------------


def leftovers(path: str | Path) -> dict[str, list[Path]]:
    """Temporary (`tmp`), complete-but-not-swapped (`new`) and replaced (`old`) siblings of a folder."""
    real = real_folder(path)
    found: dict[str, list[Path]] = {"tmp": [], "new": [], "old": []}
    try:
        entries = list(os.scandir(real.parent))
    except FileNotFoundError:
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
        if found["new"]:
            os.replace(found["new"].pop(0), real)
            outcome = "rolled forward"
        elif found["old"]:
            os.replace(found["old"].pop(0), real)
            outcome = "rolled back"
        if outcome:
            fsync_folder(real.parent)
    for paths in found.values():
        for leftover in paths:
            _remove(leftover)
    return outcome


def recover_if_interrupted(path: str | Path) -> None:
    """For readers: repair a folder left mid-swap by a killed writer; never waits for a running writer.

    When `path` exists, leftovers are swept only if no writer holds the lock. When it is missing but an
    interrupted swap left `.new`/`.old` siblings, waits for the lock (a live swap takes milliseconds) and recovers.
    """
    real = real_folder(path)
    found = leftovers(real)
    if not any(found.values()):
        return
    if real.exists():
        with folder_lock(real, blocking=False) as held:
            if held:
                _recover_locked(real)
    elif found["new"] or found["old"]:
        recover_folder(real)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- the folder writer ------------------------------------------------------------------------------------


def check_replaceable(path: str | Path, *, overwrite: bool, marker: str | None = None,
                      what: str = "folder") -> None:
    """Refuse to write `path` when that would destroy something that is not ours to replace.

    A missing path or an empty folder is fine; an existing `what` needs `overwrite`; with `marker`, only a
    folder holding that file counts as a `what` (anything else is refused whatever `overwrite` says).
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
    if marker is not None and not (real / marker).is_file():
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
def atomic_directory(path: str | Path, *, overwrite: bool = False, marker: str | None = None,
                     what: str = "folder") -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path`, on error it is removed.

    `overwrite` allows replacing an existing folder; `marker` (e.g. "manifest.json", "config.json") restricts
    that to folders holding the file, i.e. earlier outputs of the same kind (`what` names them in errors).
    The folder's lock is held for the whole block. See the module docstring for the swap, recovery rule and
    durability guarantees.
    """
    path = Path(path)
    real = real_folder(path)
    real.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(real):
        _recover_locked(real)
        check_replaceable(path, overwrite=overwrite, marker=marker, what=what)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = real.with_name(f"{real.name}.tmp-{token}")
        new = real.with_name(f"{real.name}.new-{token}")
        tmp.mkdir()
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
