"""The lock a writer holds on a folder (`folder_lock`), and what a writer waiting for it is told.

One lock per *real* folder (symlinks resolved): the file `.NAME.lock` beside the folder, held with flock(2),
so it is released when its holder exits, even when killed. The holder writes its pid, command line and start
time into the lock file; a writer that has waited `LOCK_NOTICE_S` says on stderr who it is waiting for, once,
and keeps waiting. A folder whose lock cannot be created (read-only file system, no permission) raises
`FolderNotWritableError`, an `EmbedkitError` that names the folder.

    from embedkit.locks import folder_lock

    with folder_lock("indexes/mine"):      # re-entrant in one thread
        ...                                # no other process or thread writes indexes/mine meanwhile
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from embedkit.errors import EmbedkitError

#: Seconds a writer waits for another writer's lock before saying who holds it (on stderr, once).
LOCK_NOTICE_S = 1.5
_POLL_S = 0.05
#: What the OS says when a folder cannot be changed by this process.
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class FolderNotWritableError(EmbedkitError):
    """A folder cannot be changed: it is on a read-only file system, or this user may not write there."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # why, in a few words ("it is on a read-only file system")


def real_folder(path: str | Path) -> Path:
    """The folder a path really names: symlinks (of the folder or its parents) resolved, even when missing."""
    return Path(os.path.realpath(Path(path).expanduser()))


def lock_path(path: str | Path) -> Path:
    """The lock file of a folder: `.NAME.lock` beside the real folder."""
    real = real_folder(path)
    return real.with_name(f".{real.name}.lock")


def not_writable(error: OSError, folder: Path) -> FolderNotWritableError:
    """The user-facing error for an OSError in `NOT_WRITABLE_ERRNOS` met while changing `folder`."""
    if error.errno == errno.EROFS:
        reason = "it is on a read-only file system"
    else:
        reason = f"no permission to write in {Path(error.filename).parent if error.filename else folder.parent}"
    return FolderNotWritableError(f"cannot write {folder}: {reason}; nothing was changed", reason=reason)


_held_lock = threading.Lock()
_held: dict[Path, tuple[int, int, int]] = {}  # real path -> (owning thread id, fd, depth)


def held_by_this_thread(path: str | Path) -> bool:
    """Whether the calling thread holds the lock of `path` (so its leftovers may be its own live work)."""
    with _held_lock:
        current = _held.get(real_folder(path))
    return current is not None and current[0] == threading.get_ident()


@contextlib.contextmanager
def folder_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock of the folder `path` really names (re-entrant in one thread).

    Yields True when the lock is held; with `blocking=False` yields False instead of waiting when another
    process (or thread) holds it. Raises `FolderNotWritableError` when the lock file cannot be created.
    """
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
    fd = _open_lock_file(real)
    try:
        if not _acquire(fd, real, blocking=blocking):
            yield False
            return
        recorded = _record_holder(fd)
        with _held_lock:
            _held[real] = (me, fd, 1)
        try:
            yield True
        finally:
            with _held_lock:
                _held.pop(real, None)
            if recorded:
                _clear_holder(fd)
            _flock(fd, unlock=True)
    finally:
        os.close(fd)


def _open_lock_file(real: Path) -> int:
    target = lock_path(real)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock "file" planted as a symlink (folders are shared) must not lead the record elsewhere.
        return os.open(target, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno in NOT_WRITABLE_ERRNOS:
            raise not_writable(error, real) from None
        if error.errno in (errno.ELOOP, errno.EISDIR):
            what = "a symbolic link" if error.errno == errno.ELOOP else "a folder"
            raise EmbedkitError(f"cannot lock {real}: its lock file {target} is {what}; remove it (embedkit "
                                "creates a plain empty file there)") from None
        raise EmbedkitError(f"cannot lock {real}: cannot open its lock file {target} ({error.strerror})") from None


def _flock(fd: int, *, unlock: bool = False) -> bool:
    """Take (without waiting) or release the lock; False when another holder has it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN if unlock else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(fd: int, real: Path, *, blocking: bool) -> bool:
    # Polling rather than a blocking flock, so the waiter can say after a while whom it waits for.
    if _flock(fd):
        return True
    if not blocking:
        return False
    started = time.monotonic()
    told = False
    while not _flock(fd):
        waited = time.monotonic() - started
        if not told and waited >= LOCK_NOTICE_S:
            # The holder writes its record just after taking the lock: give it a moment before saying "unknown".
            told = _tell_waiting(fd, real, anyway=waited >= 2 * LOCK_NOTICE_S)
        time.sleep(_POLL_S)
    return True


_RECORD_MAX = 4096


def _record_holder(fd: int) -> bool:
    """Write who holds the lock into the lock file; only into a file that is nothing but a lock file (a plain,
    singly linked file that is empty or holds an earlier record), so no one's data is ever overwritten."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > _RECORD_MAX:
            return False
        if info.st_size and read_holder(fd) is None:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": _command_line(), "since": time.time()}).encode(), 0)
    except OSError:
        return False  # the record only informs waiters; a full disk must not stop the writer
    return True


def _clear_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass


def read_holder(fd: int) -> dict | None:
    """The record the lock's current holder wrote (pid, command, since), or None when there is none yet."""
    try:
        record = json.loads(os.pread(fd, _RECORD_MAX, 0) or b"null")
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _command_line() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    text = shlex.join(arg.replace("\n", "\\n") for arg in argv)  # one line, as the waiter prints it
    return text if len(text) <= 300 else text[:297] + "..."


def _tell_waiting(fd: int, real: Path, *, anyway: bool) -> bool:
    holder = read_holder(fd)
    if holder is None and not anyway:
        return False
    who = "another process (it left no record)"
    if holder is not None:  # written by another process, maybe a stranger's: shown as plain text only
        pid, command, since = holder.get("pid"), holder.get("command"), holder.get("since")
        who = f"pid {pid if isinstance(pid, int) else '?'}"
        if isinstance(command, str) and command:
            who += f" ({_printable(command)[:300]})"
        if isinstance(since, (int, float)) and not isinstance(since, bool) and 0 < since < 1e11:
            who += (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} "
                    f"({max(0.0, time.time() - since):.0f} s ago)")
    print(f"embedkit: waiting for {real}: another writer holds its lock: {who}; continuing when it is done",
          file=sys.stderr, flush=True)
    return True


def _printable(text: str) -> str:
    """`text` without control characters (a terminal would act on escape sequences)."""
    return "".join(char if char.isprintable() else "?" for char in text)
