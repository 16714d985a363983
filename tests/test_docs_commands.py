"""Docs as tests: every command the docs show runs here, or is listed with the reason it cannot.

The commands are collected by `tests.docs_collect` (README.md, docs/*.md, configs/*.yaml comments, every
`--help` example; its docstring gives the rule), and each distinct one is a `test_documented_command`, run
in dependency order:
- in one temporary stand-in for the repo root (`tests.docs_workspace`): `configs/` copied with the
  substitutions and shrunk training of `tests/docs_commands.yaml`, `examples/` linked, `../shared/data/` a
  miniature of the real folders built from the bundled demo corpus, so documented relative paths work as written;
- the words of a command go through the table's substitutions (hub ids to tiny local models, files the docs
  assume to fixtures), then its own `replace`, then its `append` (options that shrink a run);
- a command runs after every command that writes a path it reads (`--out`, `--output-dir`, `-o`, …, a
  config's `output_dir`, a table `produces`), else in document order;
- `embedkit …` runs as a real process forked from a warm interpreter (`tests.forker`); `embedkit serve …`
  runs in the background on a free port (`--port` replaced or added) until `/health` answers, gets a
  `/retrieve` request, runs the `curl` commands its document shows after it (port replaced), and is stopped
  with SIGTERM; other programs (`curl`, `python examples/…`) run as ordinary subprocesses.
A command passes with exit status 0 and no traceback. One the table lists with `needs:` (what CI cannot have:
a GPU, the hub, an LLM server, a Ray cluster) must still exit 2 with an `error:` message containing the
table's `error` text and no traceback; `skip:` (other programs only: make, pip, launchers, other projects'
servers) is not run; `xfail:` marks a bug that another change fixes (strict: the test says when it passes).
`test_docs_table_is_complete` fails when a documented command starts with no known program or its quotes do
not close, when a program other than embedkit, curl or python is not listed, and when the table names a
command no doc shows any more.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs_collect import (
    PROGRAMS,
    ROOT,
    UNBALANCED,
    DocCommand,
    assignments,
    collect_commands,
    command_words,
    embedkit_argv,
)
from tests.docs_table import Entry, Table, load_table, substitute, workspace_config_text
from tests.docs_workspace import write_workspace
from tests.forker import Forker, alive

#: Programs other than embedkit that the test runs; every other one must be listed with `skip:`.
RUNNABLE_PROGRAMS = frozenset({"curl", "python", "python3", "mergekit-yaml"})
#: Options whose value is a path the command writes.
OUTPUT_FLAGS = frozenset({"--out", "--output-dir", "-o", "--output", "--index-out", "--json", "--plot",
                          "--markdown", "--index-dir"})
#: What a path-like word ends with when it has no slash.
PATH_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".trec", ".txt", ".yml", ".yaml", ".png", ".parquet",
                 ".index", ".md")

_PATH_WORD = re.compile(r"^[\w.~][\w./~+-]*$")


@dataclass
class Step:
    """A documented command as it runs here."""

    command: DocCommand
    entry: Entry
    words: list[str]  # after substitutions
    attached: list[Step] = field(default_factory=list)  # curl commands run while this server is up

    @property
    def env(self) -> dict[str, str]:
        """What the command's environment adds: exported in its document, from the table, `NAME=value` words."""
        return {**self.command.env, **self.entry.env, **assignments(self.words)}

    @property
    def is_serve(self) -> bool:
        return self.command.program == "embedkit" and embedkit_argv(self.words)[:1] == ["serve"]


def normalize_path(word: str) -> str | None:
    """The relative path a word names (without `hf:`), or None when it is no relative path."""
    word = word.removeprefix("hf:")
    if not _PATH_WORD.match(word) or word.startswith("/"):
        return None
    if "/" not in word and not word.endswith(PATH_SUFFIXES):
        return None
    return os.path.normpath(word)


def config_paths(words: list[str], table: Table) -> tuple[set[str], set[str]]:
    """(paths read, paths written) by the `--config` file a command names, as the workspace holds it."""
    if "--config" not in words:
        return set(), set()
    name = Path(words[words.index("--config") + 1]).name
    if not (ROOT / "configs" / name).is_file():
        return set(), set()
    reads: set[str] = set()
    writes: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, str(child_key))
        elif isinstance(value, list):
            for child in value:
                walk(child, key)
        elif isinstance(value, str) and (path := normalize_path(value)) is not None:
            (writes if key == "output_dir" else reads).add(path)

    walk(yaml.safe_load(workspace_config_text(name, table)))
    if "--output-dir" in words:
        writes = set()
    return reads, writes


def inputs_and_outputs(step: Step, table: Table) -> tuple[set[str], set[str]]:
    """The relative paths a step reads and writes, from its options, its config and the table."""
    words = command_words(step.words)
    reads, writes = config_paths(words, table)
    writes |= {os.path.normpath(path) for path in step.entry.produces}
    for i, word in enumerate(words):
        path = normalize_path(word.split("=", 1)[-1])
        if path is None:
            continue
        flag = words[i - 1] if i else ""
        is_output = flag in OUTPUT_FLAGS or (flag == "--index" and embedkit_argv(step.words)[:1] == ["encode"])
        (writes if is_output else reads).add(path)
    return reads - writes, writes


def plan(commands: list[DocCommand], table: Table) -> list[Step]:
    """The steps in the order they run: a step after every step that writes what it reads, else as documented."""
    steps: list[Step] = []
    last_serve: dict[str, Step] = {}
    for command in commands:
        entry = table.commands.get(command.key, Entry())
        words = [substitute(substitute(word, table.substitutions), entry.replace) for word in command.words]
        step = Step(command, entry, words + entry.append)
        if command.program == "curl" and command.document in last_serve and not entry.skip:
            last_serve[command.document].attached.append(step)
            continue
        if step.is_serve:
            last_serve[command.document] = step
        steps.append(step)
    paths = {id(step): inputs_and_outputs(step, table) for step in steps}

    def depends(consumer: Step, producer: Step) -> bool:
        reads, writes = paths[id(consumer)][0], paths[id(producer)][1]
        return any(r == w or r.startswith(w + "/") or w.startswith(r + "/") for r in reads for w in writes)

    ordered: list[Step] = []
    state: dict[int, str] = {}

    def visit(step: Step) -> None:
        if state.get(id(step)):
            return  # done, or on the stack (a cycle: keep the documented order)
        state[id(step)] = "visiting"
        for other in steps:
            if other is not step and depends(step, other):
                visit(other)
        state[id(step)] = "done"
        ordered.append(step)

    for step in steps:
        visit(step)
    return ordered


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    problem: str = ""  # what went wrong beyond the exit status (a server that never answered, …)
    cpu_s: float = 0.0

    def describe(self) -> str:
        return (f"exit status {self.rc}{' (timed out)' if self.timed_out else ''}, {self.cpu_s:.1f} CPU s; "
                f"{self.problem}\n"
                f"--- stdout (end)\n{self.stdout[-3000:]}\n--- stderr (end)\n{self.stderr[-5000:]}")


def free_port() -> int:
    from tests.helpers import free_port as pick

    return pick()


def with_port(argv: list[str], port: int) -> list[str]:
    """A serve command's argv on `port` (its `--port` replaced, or added)."""
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
        return argv
    return [*argv, "--port", str(port)]


class DocsRun:
    """Runs the planned steps in order, once each, and keeps their results."""

    def __init__(self, steps: list[Step], workspace: Path, env: dict[str, str]) -> None:
        self.steps, self.workspace, self.env = steps, workspace, env
        self.logs = workspace.parent / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results: dict[str, Result] = {}
        self.done = 0
        self.forker = Forker(env)

    def result(self, key: str) -> Result:
        """The result of the command `key`, running every step planned before it first."""
        while key not in self.results and self.done < len(self.steps):
            self.run_step(self.steps[self.done])
            self.done += 1
        return self.results[key]

    def run_step(self, step: Step) -> None:
        if step.entry.skip:
            return
        if step.command.program not in RUNNABLE_PROGRAMS | {"embedkit"}:
            self.results[step.command.key] = Result(1, "", "", problem="not run: list this program with `skip:`")
        elif step.is_serve:
            self.run_server(step)
        elif step.command.program == "embedkit":
            self.results[step.command.key] = self.run_embedkit(step)
        else:
            self.results[step.command.key] = self.run_program(step.words, step.env, step.entry.timeout)

    def _paths(self) -> tuple[Path, Path]:
        number = len(list(self.logs.iterdir())) // 2
        return self.logs / f"{number:03d}.out", self.logs / f"{number:03d}.err"

    def start_embedkit(self, words: list[str], env: dict[str, str]) -> tuple[int, Path, Path]:
        stdout, stderr = self._paths()
        pid = self.forker.start(embedkit_argv(words), cwd=self.workspace, env={**self.env, **env}, stdout=stdout,
                                stderr=stderr)
        return pid, stdout, stderr

    def run_embedkit(self, step: Step) -> Result:
        pid, stdout, stderr = self.start_embedkit(step.words, step.env)
        end = self.forker.wait(pid, step.entry.timeout)
        return Result(end["rc"], stdout.read_text(errors="replace"), stderr.read_text(errors="replace"),
                      end["timed_out"], cpu_s=end["cpu_s"])

    def run_program(self, words: list[str], env: dict[str, str], timeout: int) -> Result:
        """Another program (curl, `python script`), as a subprocess of its own."""
        argv = command_words(words)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        elif (ROOT / ".venv" / "bin" / argv[0]).exists():
            argv[0] = str(ROOT / ".venv" / "bin" / argv[0])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            done = subprocess.run(argv, cwd=self.workspace, env={**self.env, **env},
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            return Result(-9, str(error.stdout or ""), str(error.stderr or ""), timed_out=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Result(done.returncode, done.stdout, done.stderr, cpu_s=cpu_s)

    def run_server(self, step: Step) -> None:
        """Start the server, ask it, run the curl commands shown after it, stop it."""
        port = free_port()
        words = with_port(step.words, port)
        pid, stdout, stderr = self.start_embedkit(words, step.env)
        try:
            problem = self.ask_server(pid, port, step.env.get("EMBEDKIT_API_KEY"), step.entry.timeout)
            for curl in step.attached:
                curl_words = [re.sub(r"(localhost|127\.0\.0\.1):8000\b", rf"\1:{port}", w) for w in curl.words]
                self.results[curl.command.key] = self.run_program(curl_words, curl.env, 60) if not problem else Result(
                    1, "", "", problem=f"its server did not answer: {problem}")
        finally:
            end = self.forker.stop(pid)  # whatever happened: no server outlives its step
        rc = end["rc"]
        if problem == "exited":
            problem = "the server exited before it answered"
        elif not problem and rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            problem = "the server did not stop cleanly on SIGTERM"  # uvicorn re-raises the signal it handled
        self.results[step.command.key] = Result(rc if problem else 0, stdout.read_text(errors="replace"),
                                                stderr.read_text(errors="replace"), end["timed_out"], problem,
                                                end["cpu_s"])

    def ask_server(self, pid: int, port: int, api_key: str | None, timeout: float) -> str:
        """'' when the server answered /health and a /retrieve request; else what went wrong."""
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if not alive(pid):
                return "exited"
            try:
                if httpx.get(f"{base}/health", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return "no answer on /health"
            time.sleep(0.3)
        try:
            response = httpx.post(f"{base}/retrieve", headers=headers, timeout=60,
                                  json={"queries": ["how does bread rise?"], "topk": 3, "return_scores": True})
        except httpx.HTTPError as error:
            return f"/retrieve failed: {error!r}"
        if response.status_code != 200 or not response.json().get("result", [[]])[0]:
            return f"/retrieve answered {response.status_code}: {response.text[:500]}"
        return ""

    def close(self) -> None:
        self.forker.close()

    def write_summary(self, path: Path) -> None:
        """Exit status and CPU seconds of every command that ran (the runtime on a quiet machine)."""
        rows = [f"{r.rc}\t{r.cpu_s:.1f}\t{key}" for key, r in self.results.items()]
        total = sum(r.cpu_s for r in self.results.values())
        path.write_text(f"# {len(rows)} commands, {total:.0f} CPU s\n" + "\n".join(rows) + "\n", encoding="utf-8")


TABLE = load_table()
COMMANDS = collect_commands()
STEPS = plan(COMMANDS, TABLE)


def run_order() -> list[Step]:
    """Every step in run order, each with the curl commands it runs listed right after it."""
    order: list[Step] = []
    for step in STEPS:
        order += [step, *step.attached]
    return order


def test_docs_table_is_complete() -> None:
    """Every documented command is a program the test knows; the table lists only documented commands."""
    by_key = {command.key: command for command in COMMANDS}
    attached = {curl.command.key for step in STEPS for curl in step.attached}
    problems = []
    for command in COMMANDS:
        entry = TABLE.commands.get(command.key, Entry())
        where = ", ".join(command.sources)
        if command.words[0] == UNBALANCED:
            problems.append(f"{where}: `{command.words[1]}`: its quotes do not close")
        elif command.program not in PROGRAMS:
            problems.append(f"{where}: `{command.key}` starts with no known program (a shell block holds commands)")
        elif command.program == "embedkit" and entry.skip:
            problems.append(f"{where}: `{command.key}` is an embedkit command: list it with needs/error, not skip")
        elif command.program != "embedkit" and command.program not in RUNNABLE_PROGRAMS and not entry.skip:
            problems.append(f"{where}: `{command.key}` runs {command.program}: list it with `skip:` and a reason")
        if entry.needs and not entry.error:
            problems.append(f"`{command.key}`: a listed command needs `error:`, the message it must fail with")
        if command.program == "curl" and not entry.skip and command.key not in attached:
            problems.append(f"{where}: `{command.key}` has no `embedkit serve` before it in its document to ask")
    for key in TABLE.commands:
        if key not in by_key:
            problems.append(f"docs_commands.yaml lists `{key}`, which no doc shows (any more)")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def docs_run(tmp_path_factory: pytest.TempPathFactory):
    """The stand-in repo root, and the runner that runs the steps in it."""
    root = tmp_path_factory.mktemp("docs")
    workspace = root / "repo"
    write_workspace(workspace, TABLE)
    run = DocsRun(STEPS, workspace, docs_env(root))
    yield run
    run.close()
    run.write_summary(root / "summary.tsv")


def docs_env(root: Path) -> dict[str, str]:
    """The environment of a CPU machine with no hub, no GPU and no Ray cluster, writing only under `root`."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path,
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "",
           "HF_HOME": os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")),
           "HOME": str(root / "home"), "EMBEDKIT_CACHE": str(root / "cache"),
           "RAY_TMPDIR": str(root / "ray"), "RAY_ADDRESS": ""}  # `--ray-address auto` finds no cluster
    for name in ("EMBEDKIT_API_KEY", "EMBEDKIT_IMAGE_READER"):  # tests/conftest.py sets them; the docs do not
        env.pop(name, None)
    return env


def _param(step: Step):
    entry = step.entry
    marks = [pytest.mark.xfail(strict=True, reason=entry.xfail)] if entry.xfail else []
    return pytest.param(step, id=step.command.key[:150], marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("step", [_param(step) for step in run_order()])
def test_documented_command(step: Step, docs_run: DocsRun) -> None:
    """The command works as documented, or (listed) fails with exit 2 and a clear message."""
    entry, where = step.entry, ", ".join(step.command.sources)
    if entry.skip:
        pytest.skip(f"not run here: {entry.skip}")
    result = docs_run.result(step.command.key)
    shown = f"{where}: {shlex.join(step.words)}\n{result.describe()}"
    assert "Traceback (most recent call last)" not in result.stderr, shown
    if entry.needs:
        assert result.rc == 2, f"listed ({entry.needs}) but did not exit 2\n{shown}"
        assert "error:" in result.stderr and entry.error in result.stderr, f"expected '{entry.error}'\n{shown}"
    else:
        assert result.rc == 0 and not result.problem, shown
