"""Issue 22, items 8 and 10 (locks), from the command line: a writer that waits for another writer's lock says
whom it waits for; a folder that cannot be written (read-only file system, no permission) is a one-line error
for writers, and readers read on without sweeping.

Read-only file systems are real: a private bind mount remounted read-only inside `unshare --mount` (as root;
`unshare --user --map-root-user --mount` otherwise). "No permission" is a process without capabilities
(`unshare --user` as root, so it keeps the interpreter under /root readable) on a 0o555 folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import test_index_integrity as integrity
from tests.helpers import write_jsonl
from tests.test_index_integrity import ROOT, assert_user_error, docs, embedkit

# Its fixtures: a tiny BERT, a 30-document dense index built once, and a fresh copy per test at tmp/indexes/idx.
tiny_model, base_index, index = integrity.tiny_model, integrity.base_index, integrity.index

pytestmark = pytest.mark.slow

_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def read_only_prefix(tmp_path_factory) -> list[str]:
    """The `unshare …` prefix that can mount a folder read-only for one command here (skips when none can)."""
    probe = tmp_path_factory.mktemp("probe")
    candidates = [["unshare", "--mount", "--propagation", "private"], ["unshare", "--user", "--map-root-user", "--mount"]]
    for prefix in candidates if os.geteuid() == 0 else candidates[1:]:
        try:
            result = subprocess.run([*prefix, "sh", "-c", _RO_MOUNT, str(probe), "sh", "-c", f"! touch {probe}/x"],
                                    capture_output=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and not (probe / "x").exists():
            return prefix
    pytest.skip("no read-only mount can be made here (unshare --mount is not permitted)")


def embedkit_read_only(prefix: list[str], folder: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """`python -m embedkit ARGS` with `folder` mounted read-only for that process alone."""
    return subprocess.run([*prefix, "sh", "-c", _RO_MOUNT, str(folder), sys.executable, "-m", "embedkit",
                           *map(str, args)], capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- item 8: writers on a read-only file system --------------------------------------------------------------


def test_writers_on_a_read_only_file_system_exit_2_and_change_nothing(index, read_only_prefix):
    parent = index.parent
    before = snapshot(parent)
    for args in (("index", "remove", index, "--id", "d1"), ("index", "compact", index),
                 ("index", "merge", index, "--out", parent / "merged")):  # fmt: skip
        result = embedkit_read_only(read_only_prefix, parent, *args)
        assert_user_error(result, "read-only file system", "cannot write")
        assert "OSError" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(parent) == before


def test_readers_on_a_read_only_file_system_leave_leftovers_and_read_on(index, read_only_prefix):
    shutil.copytree(index, index.with_name("idx.old-1-0123abcd"))  # what a writer killed after its swap leaves
    (index.with_name("idx.tmp-2-0123abcd")).mkdir()
    for command in ("verify", "info"):
        result = embedkit_read_only(read_only_prefix, index.parent, "index", command, index)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in index.parent.iterdir()) == ["idx", "idx.old-1-0123abcd", "idx.tmp-2-0123abcd"]
    # Writable again: the next reader sweeps.
    assert embedkit("index", "info", index).returncode == 0
    assert sorted(p.name for p in index.parent.iterdir() if not p.name.endswith(".lock")) == ["idx"]


def test_a_missing_folder_that_cannot_be_restored_read_only_is_a_clear_error(index, read_only_prefix):
    finished = index.with_name("idx.new-3-0123abcd")
    index.rename(finished)  # killed between moving the old folder away and moving the new one in
    result = embedkit_read_only(read_only_prefix, index.parent, "index", "info", index)
    assert_user_error(result, f"{index} is missing", "read-only file system", f"rename {finished} to {index}")
    assert finished.is_dir() and not index.exists()
    result = embedkit("index", "info", index)  # writable: rolled forward
    assert result.returncode == 0, result.stderr
    assert index.is_dir() and not finished.exists()


# --- item 8: no permission (EACCES) --------------------------------------------------------------------------


def _without_write_permission() -> list[str]:
    """A prefix that runs a command without the power to write in a 0o555 folder it owns (root ignores modes)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "true"]).returncode != 0:
        pytest.skip("running as root and `unshare --user` is not permitted: cannot drop the power to write")
    return ["unshare", "--user"]


def test_writers_without_permission_exit_2_readers_read_on(index):
    prefix = _without_write_permission()
    parent = index.parent
    shutil.copytree(index, index.with_name("idx.old-1-0123abcd"))
    for lock_exists in (False, True):  # the lock file is refused, or it exists and the folder refuses the swap
        if lock_exists:
            (parent / ".idx.lock").touch()
        parent.chmod(0o555)
        if lock_exists:
            index.chmod(0o555)  # a dense update writes its new files inside the folder (segments), not beside it
        try:
            command = [*prefix, sys.executable, "-m", "embedkit"]
            run = subprocess.run([*command, "index", "remove", str(index), "--id", "d1"], capture_output=True,
                                 text=True, env=_env(), timeout=300, cwd=ROOT)  # fmt: skip
            assert_user_error(run, f"cannot write {index}", f"no permission to write in {index if lock_exists else parent}")
            run = subprocess.run([*command, "index", "verify", str(index)], capture_output=True, text=True,
                                 env=_env(), timeout=300, cwd=ROOT)  # fmt: skip
            assert run.returncode == 0, run.stderr
        finally:
            index.chmod(0o755)
            parent.chmod(0o755)
        assert (parent / "idx.old-1-0123abcd").is_dir()  # nothing could be swept


# --- item 10: a waiting writer says whom it waits for --------------------------------------------------------


def test_a_writer_waiting_for_the_lock_names_the_holder(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(8))
    out = tmp_path / "bm25"
    build = ("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus, "--out", out)
    assert embedkit(*build).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from embedkit.io import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)  # fmt: skip
    waiter = None
    release = threading.Timer(120, lambda: holder.stdin.close())  # never hang the suite if the notice never comes
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-m", "embedkit", *map(str, build), "--overwrite"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)  # fmt: skip
        release.start()
        notice = waiter.stderr.readline()  # blocks until the waiter speaks (or, if it never does, until release)
        holder.stdin.close()
        out_text, rest = waiter.communicate(timeout=300)
    finally:
        release.cancel()
        holder.wait(timeout=60)
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, notice + rest
    assert f"waiting for {out.resolve()}" in notice and f"pid {holder.pid}" in notice, notice
    assert "folder_lock" in notice and "since" in notice, notice  # the holder's command line and start time
    assert "waiting for" not in rest  # said once
    assert "wrote" in out_text


# --- beyond the list: lock files from strangers, and single-file writes on a read-only file system ------------


def _bm25(tmp_path: Path) -> tuple[tuple[str | Path, ...], Path]:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs(8))
    out = tmp_path / "bm25"
    build = ("index", "build", "--kind", "bm25", "--backend", "bm25s", "--corpus", corpus, "--out", out)
    assert embedkit(*build).returncode == 0
    return build, out


def test_a_lock_file_planted_as_a_symlink_or_holding_data_is_never_written(tmp_path):
    build, out = _bm25(tmp_path)
    lock = out.with_name(".bm25.lock")
    precious = tmp_path / "precious.txt"
    precious.write_text("my data")
    lock.unlink(missing_ok=True)
    lock.symlink_to(precious)  # the holder record must not truncate what the link points at
    assert_user_error(embedkit(*build, "--overwrite"), f"its lock file {lock} is a symbolic link")
    assert precious.read_text() == "my data"
    lock.unlink()
    lock.write_text("not a lock record, someone's notes")  # a plain file with data: locked, never rewritten
    assert embedkit(*build, "--overwrite").returncode == 0
    assert lock.read_text() == "not a lock record, someone's notes"


def test_a_hostile_holder_record_is_shown_as_plain_text(tmp_path):
    build, out = _bm25(tmp_path)
    lock = out.with_name(".bm25.lock")
    lock.write_text('{"pid": "\\u001b[2J", "command": "evil\\u001b]0;pwned\\u0007 cmd", "since": "yesterday"}')
    holder = subprocess.Popen(  # holds the lock without writing a record of its own
        [sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    release = threading.Timer(120, lambda: holder.stdin.close())  # never hang the suite if the notice never comes
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-m", "embedkit", *map(str, build), "--overwrite"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)  # fmt: skip
        release.start()
        notice = waiter.stderr.readline()
    finally:
        release.cancel()
        holder.stdin.close()
        holder.wait(timeout=60)
    _, rest = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, notice + rest
    assert "pid ? (evil?]0;pwned? cmd)" in notice and "\x1b" not in notice and "yesterday" not in notice, notice


def test_a_run_file_on_a_read_only_file_system_is_a_clear_error(tmp_path, read_only_prefix):
    _, out = _bm25(tmp_path)
    result = embedkit_read_only(read_only_prefix, tmp_path, "search", out, "gene cancer", "--output",
                                tmp_path / "runs" / "run.trec")  # fmt: skip
    assert_user_error(result, "cannot write", "run.trec", "read-only file system")
    assert not (tmp_path / "runs").exists()
