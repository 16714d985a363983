"""The shared YAML config loader: typed models, dotted overrides, errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.config import YamlConfig
from embedkit.errors import DataFormatError


class Optim(YamlConfig):
    lr: float = 1e-3


class Example(YamlConfig):
    name: str
    optim: Optim = Optim()


def test_load_with_section_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  name: a\n  optim:\n    lr: 0.5\n")
    config = Example.from_yaml(path, section="run", overrides={"optim.lr": 0.25})
    assert config == Example(name="a", optim=Optim(lr=0.25))
    assert Example.from_yaml(path, section="run").optim.lr == 0.5


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad_type = tmp_path / "t.yaml"
    bad_type.write_text("name: a\noptim:\n  lr: fast\n")
    with pytest.raises(DataFormatError, match=r"t\.yaml: invalid config: .* \(field 'optim\.lr'\)"):
        Example.from_yaml(bad_type)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("name: a\nbatch: 3\n")
    with pytest.raises(DataFormatError, match="field 'batch'"):
        Example.from_yaml(unknown)
    broken = tmp_path / "b.yaml"
    broken.write_text("name: [a\n")
    with pytest.raises(DataFormatError, match=r"b\.yaml, line \d+: not valid YAML"):
        Example.from_yaml(broken)
    with pytest.raises(DataFormatError, match="cannot read config"):
        Example.from_yaml(tmp_path / "missing.yaml")
