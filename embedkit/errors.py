"""User-facing errors. The CLI prints them without a traceback and exits with status 2."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EXIT_USER_ERROR = 2


class EmbedkitError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class DataFormatError(EmbedkitError):
    """Bad input data. The message names the file, the line and the field when they are known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        fields_found: Iterable[str] | None = None,
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        text = where + message
        if field is not None and f"'{field}'" not in message:
            text += f" (field '{field}')"
        if fields_found is not None:
            found = sorted(fields_found)
            text += f"; fields found: {', '.join(found) if found else '(none)'}"
        super().__init__(text)


class IndexFormatError(EmbedkitError):
    """A folder that is not an embedkit index, or an index whose files are damaged."""


class ModelUnavailableError(EmbedkitError):
    """The model an index was built with cannot be loaded."""


class ModelMismatchError(EmbedkitError):
    """A query encoder that differs from the one the index was built with."""
