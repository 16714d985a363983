"""One config convention on the command line: every command that takes `--config` takes repeated `--set`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from embedkit.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every leaf command."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
        return
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*path, name))


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_command_with_a_config_accepts_repeated_set() -> None:
    with_config = []
    for path, parser in _commands(build_parser()):
        if _option(parser, "--config") is None:
            continue
        with_config.append(" ".join(path))
        action = _option(parser, "--set")
        assert action is not None, f"`embedkit {' '.join(path)}` takes --config but not --set KEY=VALUE"
        assert isinstance(action, argparse._AppendAction), f"`embedkit {' '.join(path)} --set` must be repeatable"
    assert len(with_config) >= 5, with_config  # train, boom train, cocoa, serve, rl train, agent run, …


@pytest.mark.parametrize(("assignment", "message"), [
    ("seed", "--set expects KEY=VALUE"),
    ("no_such_field=1", "field 'no_such_field'"),
    ("seed=soon", "field 'seed'"),  # the override reached the command's config and was validated there
])
def test_bad_set_is_a_user_error_naming_it(tmp_path: Path, capsys, assignment: str, message: str) -> None:
    config_path = tmp_path / "train.yaml"
    config_path.write_text("model: m\noutput_dir: runs/x\ndatasets:\n  - {name: a, path: a.jsonl}\n")
    assert main(["train", "--config", str(config_path), "--set", assignment]) == 2
    assert message in capsys.readouterr().err


def test_boom_update_set_reaches_the_boom_config(tmp_path: Path, capsys) -> None:
    repo = Path(__file__).resolve().parents[1]
    args = ["boom", "update", "--base", "m", "--new-data", str(tmp_path / "new.jsonl"), "--output-dir",
            str(tmp_path / "out"), "--config", str(repo / "configs" / "boom.yaml")]
    # a registry-checked value: refused, naming the choices, before any model is loaded
    assert main([*args, "--set", "merge.method=nope"]) == 2
    assert "unknown merge method 'nope'; choose one of:" in capsys.readouterr().err
    assert main([*args[:-2], "--set", "merge.method=linear"]) == 2
    assert "give --config too" in capsys.readouterr().err
