"""Typed configuration loaded from YAML, with errors that name the file and the field.

    class TrainConfig(YamlConfig):
        lr: float = 2e-5

    config = TrainConfig.from_yaml("configs/train.yaml", overrides={"lr": 1e-5})
    faster = config.with_overrides({"lr": 1e-4})      # a copy; dotted keys reach nested sections

On the command line the same overrides come from repeated `--set lr=1e-5` (`parse_set_overrides`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self  # typing.Self is 3.11+; pydantic depends on typing_extensions

from embedkit.errors import DataFormatError


def load_yaml_mapping(path: str | Path, *, section: str | None = None) -> dict[str, Any]:
    """The YAML file's top-level mapping (or one section of it); an empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataFormatError(f"cannot read config: {error.strerror or error}", path=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise DataFormatError(f"not valid YAML: {getattr(error, 'problem', error)}", path=path,
                              line=mark.line + 1 if mark else None) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DataFormatError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    if section is not None:
        if not isinstance(data.get(section, {}), dict):
            raise DataFormatError(f"section '{section}' must be a mapping", path=path, field=section)
        data = data.get(section, {})
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `data` with dotted keys (`optim.lr`) set from `overrides`."""
    merged = copy.deepcopy(dict(data))
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DataFormatError(f"cannot set '{dotted}': '{part}' is not a mapping", field=dotted)
        node[leaf] = value
    return merged


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_set_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``--set a.b=VALUE`` flags; each VALUE is read as YAML (``1e-5``, ``true``, ``[1, 2]``).

    >>> parse_set_overrides(["optim.lr=1e-5", "run.name=exp 1", "tags=[a, b]", "run.tag=nan"])
    {'optim.lr': 1e-05, 'run.name': 'exp 1', 'tags': ['a', 'b'], 'run.tag': 'nan'}
    """
    overrides: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise DataFormatError(f"--set expects KEY=VALUE (dotted KEY), got {assignment!r}", field="--set")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            # PyYAML (YAML 1.1) reads "1e-5" (an exponent without a dot) as a string; users mean a number.
            # Only that form: "nan", "inf" or "1_000" stay what YAML made of them.
            value = float(value)
        overrides[key.strip()] = value
    return overrides


def validate_config(model: type[BaseModel], data: Mapping[str, Any], *, path: str | Path | None = None):
    """Validate `data` as `model`; the first problem is reported with its dotted field name."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
        raise DataFormatError(f"invalid config: {first['msg']}{more}", path=path, field=field) from None


class YamlConfig(BaseModel):
    """Base for frozen config models that users write as YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Self:
        data = apply_overrides(load_yaml_mapping(path, section=section), overrides or {})
        return validate_config(cls, data, path=path)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Self:
        """A validated copy with dotted keys replaced: the convention of `from_yaml(overrides=)` and `--set`.

        >>> class Optim(YamlConfig):
        ...     lr: float = 1e-3
        ...     steps: int = 10
        >>> class Run(YamlConfig):
        ...     optim: Optim = Optim()
        >>> Run().with_overrides({"optim.lr": 0.5}).optim
        Optim(lr=0.5, steps=10)
        """
        return validate_config(type(self), apply_overrides(self.model_dump(), overrides))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
