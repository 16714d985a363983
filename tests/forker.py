"""A warm interpreter that forks `python -m embedkit` processes, so each command skips ~6 s of imports.

The interpreter imports torch and friends and computes nothing, so no OpenMP pool exists at a fork (the
helper threads imports start, OpenBLAS's and jemalloc's, are fork-safe, as for PyTorch DataLoader's forked
workers). Each child runs `python -m embedkit`'s own `__main__` with its argv, environment, working
directory, stdin, stdout and stderr, in a process group of its own, so its exit status, output and CPU time
are those of a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.docs_collect import ROOT

#: What the warm interpreter imports before it forks (imports only: nothing that starts an OpenMP pool).
PRELOAD = ("numpy", "torch", "transformers", "sentence_transformers", "faiss", "fastapi", "uvicorn", "httpx",
           "pyarrow", "embedkit.cli")


def forker_main() -> None:
    """The warm interpreter: forks `python -m embedkit` children on request (one JSON object per line)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing but replies on the reply channel
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            reply: dict[str, Any] = {"pid": _fork_embedkit(request)}
        elif request["op"] == "wait":
            reply = _wait_child(request["pid"], request["timeout"])
        else:  # stop
            try:
                os.killpg(request["pid"], signal.SIGTERM)
            except ProcessLookupError:  # nothing of it runs any more (it still waits to be reaped)
                pass
            reply = _wait_child(request["pid"], request["timeout"])
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _fork_embedkit(request: dict[str, Any]) -> int:
    import atexit
    import runpy
    import traceback

    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills whatever it started too
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["embedkit", *request["argv"]]
        try:
            runpy.run_module("embedkit", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _wait_child(pid: int, timeout: float) -> dict[str, Any]:
    """Its exit status and CPU seconds (what it costs on a quiet machine, whatever the load here)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return {"rc": os.waitstatus_to_exitcode(status), "timed_out": False,
                    "cpu_s": usage.ru_utime + usage.ru_stime}
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, _, usage = os.wait4(pid, 0)
            return {"rc": -9, "timed_out": True, "cpu_s": usage.ru_utime + usage.ru_stime}
        time.sleep(0.05)


class Forker:
    """The parent side of `forker_main`: start, wait for and stop `embedkit` processes."""

    def __init__(self, env: dict[str, str]) -> None:
        code = "from tests.forker import forker_main; forker_main()"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=ROOT)

    def _ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking interpreter died (status {self.process.wait()})")
        return json.loads(line)

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> int:
        return self._ask(op="start", argv=argv, cwd=str(cwd), env=env, stdout=str(stdout), stderr=str(stderr))["pid"]

    def wait(self, pid: int, timeout: float) -> dict[str, Any]:
        """{"rc", "timed_out", "cpu_s"} once the process ends (killed at `timeout`)."""
        return self._ask(op="wait", pid=pid, timeout=timeout)

    def stop(self, pid: int, timeout: float = 60) -> dict[str, Any]:
        """SIGTERM, then as `wait`."""
        return self._ask(op="stop", pid=pid, timeout=timeout)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def alive(pid: int) -> bool:
    """Whether a child of the forking interpreter still runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
