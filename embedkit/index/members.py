"""Which paths of an index folder a reader may follow. Index folders are input from strangers (people share
them), so nothing a folder names may lead outside it:

- `member_name_problem`: a name recorded in `manifest.json` (a `files` key, `vectors.file`) must be relative,
  canonical and without `..` — checked on the text alone, before anything is opened;
- `scan_folder`: the folder's entries that leave it (symlinks whose real target is outside the folder) or that
  are neither regular files nor folders (a FIFO blocks whoever opens it; sockets and devices are not data).

The one link a folder may hold is the one `embedkit index import --link` makes (the FAISS file, symlinked to
the file it imported); `IndexManifest.load` allows it only where the manifest's `import` entry records that
target.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

_SPECIAL = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device"}


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot be a path inside an index folder, or None when it can (e.g. "bm25s/vocab.json")."""
    if not name:
        return "is empty"
    if "\x00" in name:
        return "holds a NUL character"
    if name.startswith("/") or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        return "is an absolute path"
    if "\\" in name:
        return "holds a backslash (a path separator on Windows)"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' component (it climbs out of the folder)"
    if any(part in ("", ".") for part in parts):
        return "is not a plain relative path (it has an empty or '.' component)"
    return None


def check_member_name(name: str) -> str:
    """`name`, or ValueError saying why it cannot name a file inside an index folder (a pydantic validator)."""
    problem = member_name_problem(name)
    if problem is not None:
        raise ValueError(f"{name!r} {problem}; every path in a manifest must name a file inside its index folder")
    return name


@dataclass
class FolderScan:
    """Entries of a folder a reader must not follow, by path relative to the folder ("a/b")."""

    outside: dict[str, str] = field(default_factory=dict)  # symlink -> its real target, outside the folder
    special: dict[str, str] = field(default_factory=dict)  # entry -> what it is (FIFO, socket, device)


def scan_folder(folder: Path) -> FolderScan:
    """Find the symlinks of `folder` (at any depth) that resolve outside it and its non-regular entries.

    Symlinks are not followed while walking, so a link to a folder outside is reported, not descended into.
    """
    real = os.path.realpath(folder)
    scan = FolderScan()
    for current, folders, files in os.walk(real):
        for name in folders + files:
            full = os.path.join(current, name)
            relative = os.path.relpath(full, real).replace(os.sep, "/")
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                continue  # gone meanwhile: the checks that open it report it missing
            if stat.S_ISLNK(mode):
                target = os.path.realpath(full)
                if not _inside(target, real):
                    scan.outside[relative] = target
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                scan.special[relative] = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
    return scan


def _inside(target: str, folder: str) -> bool:
    return target == folder or target.startswith(folder.rstrip(os.sep) + os.sep)
