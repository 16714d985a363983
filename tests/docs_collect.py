"""The commands the docs show: README.md, docs/*.md, configs/*.yaml comments and every `embedkit … --help`.

What counts as a documented command (`collect_commands`):
- README.md and docs/*.md: every line of a fenced block marked bash/sh/shell/console, the lines of an unmarked
  fence that start with a program below, and inline `code spans` in prose that start with one. An
  `export NAME=value` line of a shell fence sets NAME for the commands after it in that file;
- configs/*.yaml: `code spans` in comments, and comments that are a command (optionally after a label such as
  `Try:`, `Train:`), with `\\` continuation lines;
- `embedkit --help` and every subcommand's `--help`: the lines of its examples that start with a program.
A program is `embedkit` (also `python -m embedkit`, `.venv/bin/embedkit`), `python`, `make`, `curl`, `pip`,
`accelerate`, `torchrun` or `mergekit-yaml`, after any `NAME=value` environment assignments. A span that only
names a command (`embedkit search`, `embedkit index build`, `accelerate launch`) is a reference, not a command.
`accelerate launch -m embedkit …` and `torchrun … -m embedkit …` are also collected as the plain `embedkit …`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: First words that start a command (after `NAME=value` assignments and a `.venv/bin/` prefix).
PROGRAMS = frozenset({"embedkit", "python", "python3", "make", "curl", "accelerate", "torchrun", "pip",
                      "mergekit-yaml"})
#: Fence info strings whose every line is a shell command.
SHELL_FENCES = frozenset({"bash", "sh", "shell", "console"})
#: Launchers of `-m embedkit …` on several processes; the plain `embedkit …` is collected too.
LAUNCHERS = frozenset({"accelerate", "torchrun"})

#: The first word of a command whose quoting does not close (the second is its text).
UNBALANCED = "<unbalanced quotes>"

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
_INLINE = re.compile(r"`([^`]+)`")
_LABEL = re.compile(r"^(?:[A-Z][a-z]+:\s+)")  # "Data:", "Train:" before a command in a YAML comment


@dataclass
class DocCommand:
    """One command as the docs show it (words after shell quoting), with every place that shows it."""

    words: list[str]
    sources: list[str] = field(default_factory=list)
    shell_block: bool = False  # from a shell fence: a first word that is no program is an error, not prose
    env: dict[str, str] = field(default_factory=dict)  # exported above its first appearance

    @property
    def key(self) -> str:
        return shlex.join(self.words)

    @property
    def program(self) -> str:
        return program_of(self.words)

    @property
    def document(self) -> str:
        """The file (or `--help`) that first shows the command, without the line number."""
        return self.sources[0].split(":")[0]


def split_words(text: str) -> list[str] | None:
    """The words of a shell line, its `# comment` dropped; None when the quoting does not close."""
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return None


def command_words(words: list[str]) -> list[str]:
    """The words after leading `NAME=value` assignments, with `.venv/bin/` dropped from the program."""
    rest = list(words)
    while rest and _ASSIGNMENT.match(rest[0]):
        rest.pop(0)
    if rest:
        rest[0] = re.sub(r"^(\./)?\.venv/bin/", "", rest[0])
    return rest


def assignments(words: list[str]) -> dict[str, str]:
    """The `NAME=value` environment assignments before the program."""
    env = {}
    for word in words:
        if not _ASSIGNMENT.match(word):
            break
        name, value = word.split("=", 1)
        env[name] = value
    return env


def program_of(words: list[str]) -> str:
    """`embedkit` for `embedkit …` and `python -m embedkit …`; else the first word."""
    rest = command_words(words)
    if not rest:
        return ""
    if rest[0] in ("python", "python3") and rest[1:3] == ["-m", "embedkit"]:
        return "embedkit"
    return rest[0]


def embedkit_argv(words: list[str]) -> list[str]:
    """The arguments after `embedkit` (or `python -m embedkit`)."""
    rest = command_words(words)
    return rest[3:] if rest[0] in ("python", "python3") else rest[1:]


def is_command(words: list[str] | None, text: str) -> bool:
    """Whether it starts with a program (judged on its plain words when its quoting does not close)."""
    rest = command_words(words if words is not None else text.split())
    return bool(rest) and rest[0] in PROGRAMS


def walk_parsers() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) of `embedkit` and every subcommand, in `--help` order."""
    from embedkit.cli import build_parser

    found: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        found.append((path, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))

    walk(build_parser(), ("embedkit",))
    return found


def is_reference(words: list[str] | None, references: set[tuple[str, ...]]) -> bool:
    """`embedkit search`, `embedkit index build`, `accelerate launch`: a span naming a command, not running one."""
    rest = command_words(words or [])
    return tuple(rest) in references or rest in (["accelerate", "launch"], ["torchrun"])


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next one; each keeps its first line's number."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


@dataclass
class Found:
    """One appearance of a command."""

    source: str  # file:line, or "embedkit … --help"
    words: list[str] | None  # None when its quoting does not close
    shell_block: bool  # from a shell fence
    text: str
    env: dict[str, str] = field(default_factory=dict)  # `export NAME=value` lines above it in its document


def span_commands(text: str, source: str, references: set[tuple[str, ...]]) -> list[Found]:
    """The inline `code spans` of prose that are commands."""
    found: list[Found] = []
    for match in _INLINE.finditer(text):
        span = " ".join(match.group(1).split())
        words = split_words(span)
        if is_command(words, span) and not is_reference(words, references):
            found.append(Found(source, words, False, span))
    return found


def markdown_commands(path: Path, references: set[tuple[str, ...]]) -> list[Found]:
    """The commands of a Markdown file: shell fences, program lines of plain fences, inline spans."""
    found: list[Found] = []
    relative = path.relative_to(ROOT).as_posix()
    exported: dict[str, str] = {}  # by `export NAME=value` in a shell fence, for the rest of the file
    fence: tuple[str, str] | None = None  # (marker, info string) while inside a fence
    block: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []

    def end_paragraph() -> None:
        if paragraph:
            text = "\n".join(line for _, line in paragraph)
            for command in span_commands(text, f"{relative}:{paragraph[0][0]}", references):
                command.env = dict(exported)
                found.append(command)
        paragraph.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                end_paragraph()
                fence, block = (match.group(1), match.group(2).lower()), []
            elif line.strip():
                paragraph.append((number, line))
            else:
                end_paragraph()
            continue
        if not line.strip().startswith(fence[0]):
            block.append((number, line))
            continue
        info = fence[1]
        if info in SHELL_FENCES or info == "":
            for start, text in logical_lines(block):
                stripped = re.sub(r"^\$\s+", "", text.strip()) if info == "console" else text.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                words = split_words(stripped)
                if info in SHELL_FENCES and words and words[0] == "export":
                    exported.update(assignments(words[1:]))
                elif info in SHELL_FENCES or is_command(words, stripped):
                    found.append(Found(f"{relative}:{start}", words, info in SHELL_FENCES, stripped, dict(exported)))
        fence = None
    end_paragraph()
    return found


def yaml_commands(path: Path, references: set[tuple[str, ...]]) -> list[Found]:
    """Commands in a YAML file's comments: `code spans`, or a whole comment (after `Try:`, `Data:` …)."""
    found: list[Found] = []
    relative = path.relative_to(ROOT).as_posix()
    comments: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("#"):
            comments.append((number, line.lstrip()[1:]))
        elif " #" in line:
            comments.append((number, line.split(" #", 1)[1]))
    for number, text in logical_lines(comments):
        source = f"{relative}:{number}"
        if "`" in text:
            found.extend(span_commands(text, source, references))
            continue
        candidate = re.sub(r"^.*?\bTry:\s+", "", _LABEL.sub("", text.strip()))
        words = split_words(candidate)
        if is_command(words, candidate) and not is_reference(words, references):
            found.append(Found(source, words, False, candidate))
    return found


def help_commands() -> list[Found]:
    """The example lines of `embedkit --help` (its description) and of every subcommand's `--help` (epilog)."""
    found: list[Found] = []
    for path, parser in walk_parsers():
        texts = [parser.epilog or ""] + ([parser.description or ""] if len(path) == 1 else [])
        for text in texts:
            for _, line in logical_lines(list(enumerate(text.splitlines()))):
                stripped = line.strip()
                words = split_words(stripped)
                if stripped and not stripped.startswith("#") and is_command(words, stripped):
                    found.append(Found(" ".join(path) + " --help", words, True, stripped))
    return found


def collect_commands() -> list[DocCommand]:
    """Every command of README.md, docs/*.md, configs/*.yaml comments and `--help`, once each, in that order.

    A command shown in several places runs once, with the `export`ed environment of the first place.
    """
    references = {path for path, _ in walk_parsers()}
    raw: list[Found] = markdown_commands(ROOT / "README.md", references)
    for path in sorted((ROOT / "docs").glob("*.md")):
        raw += markdown_commands(path, references)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw += yaml_commands(path, references)
    raw += help_commands()
    commands: dict[str, DocCommand] = {}
    for found in raw:
        entries = [found.words if found.words is not None else [UNBALANCED, found.text]]
        rest = command_words(entries[0])
        if rest and rest[0] in LAUNCHERS and "-m" in rest and rest[rest.index("-m") + 1:][:1] == ["embedkit"]:
            entries.append(["embedkit", *rest[rest.index("-m") + 2:]])
        for words in entries:
            command = DocCommand(words, shell_block=found.shell_block, env=found.env)
            commands.setdefault(command.key, command).sources.append(found.source)
    return list(commands.values())
