"""tests/docs_commands.yaml: how each documented command runs here (substitutions, shrunk configs, entries)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tests.docs_collect import ROOT

TABLE_PATH = Path(__file__).with_name("docs_commands.yaml")

class Entry(BaseModel):
    """How one documented command is run here (the keys of `commands:` in docs_commands.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs: str | None = None  # what CI cannot have; the command must still exit 2 with `error` in its message
    error: str | None = None
    skip: str | None = None  # not an embedkit command and not run here: why
    xfail: str | None = None  # a known bug that another change fixes
    replace: dict[str, str] = Field(default_factory=dict)  # this command's own substitutions
    append: list[str] = Field(default_factory=list)  # options that shrink its run (fewer questions, pairs)
    env: dict[str, str] = Field(default_factory=dict)  # environment it needs here (as its docs say elsewhere)
    produces: list[str] = Field(default_factory=list)  # paths it writes that its options do not name
    timeout: int = 300  # seconds; the heaviest command needs ~40 CPU seconds


class Table(BaseModel):
    """tests/docs_commands.yaml: substitutions, config overrides and the per-command entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    substitutions: dict[str, str]
    config_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    commands: dict[str, Entry] = Field(default_factory=dict)


def load_table() -> Table:
    return Table.model_validate(yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8")))


def substitute(text: str, mapping: dict[str, str]) -> str:
    """`text` with each key of `mapping` replaced, in one pass, where it stands as a whole path or word."""
    if not mapping:
        return text
    keys = "|".join(re.escape(key) for key in sorted(mapping, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])(?:{keys})(?![\w-])", lambda match: mapping[match.group(0)], text)


def merge_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`config` with `overrides` merged into it, nested mappings key by key."""
    merged = dict(config)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def workspace_config_text(name: str, table: Table) -> str:
    """configs/NAME as the workspace holds it: substituted, then the table's overrides merged in."""
    text = substitute((ROOT / "configs" / name).read_text(encoding="utf-8"), table.substitutions)
    overrides = table.config_overrides.get(name)
    if not overrides:
        return text
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(merge_overrides(yaml.safe_load(text), overrides), sort_keys=False)
