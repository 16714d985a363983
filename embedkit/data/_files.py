"""Low-level reading shared by every input reader: numbered UTF-8 lines, JSON lines and tab/comma rows.

Every problem becomes a `DataFormatError` naming the file and the line: bytes that are not UTF-8, a lone
surrogate escape in JSON, JSON nested too deeply, a key repeated in one JSON object, a NaN/Infinity literal or a
number too large for a float, an unclosed quoted field, a damaged gzip stream, an id holding a control character.
A UTF-8 byte order mark at the start of a file is dropped (Excel and Notepad write one).
Lines end at "\\n" (a "\\r" before it is dropped too), so "\\r", U+2028 or U+0085 inside a line stay part of it.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from embedkit.errors import DataFormatError

BOM = "\ufeff"
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON escape of a surrogate half; valid pairs decode to one character, lone halves stay surrogates.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped for `.gz`."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
        return open(path, "rb")
    except OSError as error:
        raise DataFormatError(f"cannot read: {error.strerror or error}", path=path) from None


def open_text(path: Path) -> IO[str]:
    """A text handle (UTF-8, BOM dropped) for callers that only count or skim lines."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace")


def base_suffix(path: Path) -> str:
    """`.jsonl` for `x.jsonl.gz`: the format suffix under an optional compression suffix."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def iter_lines(path: str | Path, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for every line, decoded as UTF-8; the line ending is dropped unless `keep_ends`.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = path.write_bytes(b"first\\r\\n\\nthird")
    >>> list(iter_lines(path))
    [(1, 'first'), (2, ''), (3, 'third')]
    """
    path = Path(path)
    offset = 0
    number = 0
    handle = open_binary(path)
    try:
        with handle:
            for number, raw in enumerate(handle, start=1):  # noqa: B007 (number is used after the loop)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    bad = raw[error.start : error.start + 1]
                    raise DataFormatError(
                        f"not valid UTF-8: byte {bad!r} at byte offset {offset + error.start} of the file "
                        "(save it as UTF-8)", path=path, line=number
                    ) from None
                if number == 1 and text.startswith(BOM):
                    text = text[1:]
                if not keep_ends:
                    if text.endswith("\n"):
                        text = text[:-1]
                    if text.endswith("\r"):
                        text = text[:-1]
                offset += len(raw)
                yield number, text
    except _GZIP_ERRORS as error:
        raise DataFormatError(f"damaged gzip stream after line {number}: {error}", path=path) from None
    except IsADirectoryError:
        raise DataFormatError("is a folder, not a file", path=path) from None


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """(field path, item) for every value and key inside a parsed JSON value, in document order."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        yield where or "(value)", item
        if isinstance(item, dict):
            inner = []
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                inner += [(name, key), (name, child)]
            stack.extend(reversed(inner))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{where}[{index}]", child) for index, child in enumerate(item)]))


def find_surrogate(value: Any) -> tuple[str, str] | None:
    """(field path, text) of the first string (key or value) holding a lone surrogate, or None."""
    return next(((where, item) for where, item in _walk(value)
                 if isinstance(item, str) and _SURROGATE.search(item)), None)


def surrogate_message(text: str) -> str:
    match = _SURROGATE.search(text)
    assert match is not None
    return (f"lone surrogate U+{ord(match.group()):04X} at character {match.start()} "
            "(half of a UTF-16 pair; it cannot be stored or written as UTF-8)")


# --- strict JSON: no repeated keys, no NaN/Infinity, no number that overflows a float ----------------------


class _Refused(Exception):
    """Raised by the strict JSON hooks; `parse_json_line` finds the field and reports it."""


class _RepeatedKey(dict):
    """An object that named a key twice (the locating pass returns it in place of the plain dict)."""

    key: str


@dataclass(frozen=True)
class _NotFinite:
    """A NaN/Infinity literal or an overflowing number (the locating pass returns it in place of the float)."""

    text: str


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _Refused
    return record


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused
    return value


def _refuse_constant(text: str) -> Any:
    raise _Refused


def _locating_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    flagged = _RepeatedKey(record)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            flagged.key = key
            break
        seen.add(key)
    return flagged


def _locating_float(text: str) -> float | _NotFinite:
    value = float(text)
    return _NotFinite(text) if math.isinf(value) else value


def _strictness_message(text: str, *, path: Path | str, line: int) -> DataFormatError:
    """Re-parse a line the strict hooks refused, to name the field and say what is wrong with it."""
    value = json.loads(text, object_pairs_hook=_locating_object, parse_float=_locating_float, parse_constant=_NotFinite)
    for where, item in _walk(value):
        if isinstance(item, _RepeatedKey):
            name = f"{where}.{item.key}" if where != "(value)" else item.key
            return DataFormatError(
                f"key '{item.key}' appears twice in one JSON object; which value counts depends on the reader, "
                "so the record is refused (keep one of them)", path=path, line=line, field=name)
        if isinstance(item, _NotFinite):
            shown = item.text if len(item.text) <= 24 else item.text[:21] + "..."
            problem = ("JSON has no NaN or Infinity" if item.text in ("NaN", "Infinity", "-Infinity")
                       else "it is too large for a 64-bit float")
            return DataFormatError(f"{shown} is not a usable number ({problem}); write a finite number",
                                   path=path, line=line, field=where)
    raise AssertionError("the strict JSON hooks refused a line the locating pass accepts")  # pragma: no cover


def parse_json_line(text: str, *, path: Path | str, line: int) -> Any:
    """One JSON value; malformed, too deeply nested or surrogate-holding input is a `DataFormatError`.

    Stricter than `json.loads`: a key repeated in one object (json.loads keeps the last value silently), a
    NaN/Infinity literal (not JSON) and a number that overflows a float (read as inf) are refused, naming the field.
    """
    try:
        value = json.loads(text, object_pairs_hook=_strict_object, parse_float=_strict_float,
                           parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        hint = ""
        if error.msg == "Extra data" and "\r" in text:  # lines end at "\n": a CR-only file is one long line
            hint = "; the lines seem to end with a lone carriage return (old Mac style): save the file with \\n endings"
        raise DataFormatError(f"malformed JSON ({error.msg} at column {error.colno}){hint}", path=path,
                              line=line) from None
    except RecursionError:
        raise DataFormatError("JSON nested too deeply", path=path, line=line) from None
    except _Refused:
        raise _strictness_message(text, path=path, line=line) from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise DataFormatError(f"unreadable JSON ({error})", path=path, line=line) from None
    if _SURROGATE_ESCAPE.search(text):
        found = find_surrogate(value)
        if found is not None:
            raise DataFormatError(surrogate_message(found[1]), path=path, line=line, field=found[0])
    return value


# --- ids -------------------------------------------------------------------------------------------------

#: C0 and C1 control characters (NUL, tab, LF, CR, ...): they end a field or a line in TREC runs, qrels and TSV
#: files, and C tools stop reading at NUL, so an id holding one cannot be written back faithfully.
CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
_CONTROL_NAMES = {0: "NUL", 9: "tab", 10: "line feed", 13: "carriage return"}


def control_character_problem(value: str) -> str | None:
    """"holds a control character (U+0000 NUL at character 3)" when `value` has one, else None."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    code = ord(found.group())
    name = _CONTROL_NAMES.get(code, "control character")
    return f"holds a control character (U+{code:04X} {name} at character {found.start()})"


def check_id(value: str, *, what: str, path: Path | str, line: int | None, field: str | None = None) -> str:
    """Return `value`, or raise `DataFormatError` (file, line, field) when the id holds a control character."""
    problem = control_character_problem(value)
    if problem is not None:
        raise DataFormatError(f"{what} {value!r} {problem}; ids with control characters break TREC runs and "
                              "tab-separated files (remove it from the id)", path=path, line=line, field=field)
    return value


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object is an error.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
    >>> _ = path.write_text('{"query": "a"}\\n\\n{"query": "b"}\\n')
    >>> list(iter_json_lines(path))
    [(1, {'query': 'a'}), (3, {'query': 'b'})]
    """
    path = require_file(path, "file")
    first = True
    for line_number, line in iter_lines(path):
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):
            _refuse_json_array(line, path=path, line=line_number)
        first = False
        record = parse_json_line(line, path=path, line=line_number)
        if not isinstance(record, dict):
            raise DataFormatError(f"expected a JSON object, got {_json_type(record)}", path=path, line=line_number)
        yield line_number, record


def _refuse_json_array(text: str, *, path: Path, line: int) -> None:
    """A file that starts a JSON array (a .json export) instead of one object per line: say what to do."""
    try:
        value = json.loads(text)
    except ValueError:
        value = []  # an array spread over several lines
    if isinstance(value, list):
        raise DataFormatError("this is a JSON array, not JSON Lines (one object per line); convert it, e.g. "
                              f"jq -c '.[]' {path} > {Path(path).with_name(Path(path).stem + '-lines.jsonl')}", path=path,
                              line=line)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def iter_delimited(path: Path, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, columns) of non-blank lines; `delimiter=None` splits on any whitespace."""
    for line_number, line in iter_lines(path):
        if not line.strip():
            continue
        yield line_number, (line.split(delimiter) if delimiter else line.split())


class _Unclosed(Exception):
    pass


def split_tsv_line(line: str) -> list[str]:
    """Split one TSV record on tabs; a field written as a double-quoted CSV field is unquoted.

    Quoted fields follow CSV rules: `"a<TAB>b"` holds a tab, `""` inside quotes is one quote.

    A field that starts with a quote but is not a well-formed quoted field (`"Hi," she said`, as in MS MARCO)
    is taken literally. A quoted field left open at the end of the line raises `_Unclosed`: TSV records are
    one line each, so a newline inside a text cannot be represented.
    """
    if '"' not in line:
        return line.split("\t")
    fields: list[str] = []
    start, end_of_line = 0, len(line)
    while True:
        if line.startswith('"', start):
            parts, cursor = [], start + 1
            while True:
                close = line.find('"', cursor)
                if close == -1:
                    raise _Unclosed
                parts.append(line[cursor:close])
                if line.startswith('"', close + 1):  # "" is an escaped quote
                    parts.append('"')
                    cursor = close + 2
                    continue
                break
            after = close + 1
            if after == end_of_line or line[after] == "\t":
                fields.append("".join(parts))
                if after == end_of_line:
                    return fields
                start = after + 1
                continue
        tab = line.find("\t", start)
        if tab == -1:
            fields.append(line[start:])
            return fields
        fields.append(line[start:tab])
        start = tab + 1


def iter_tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank TSV line (see `split_tsv_line` for quoting)."""
    for number, line in iter_lines(path):
        if "\t" not in line and not line.strip():
            continue  # a blank line; a line of tabs is a row of empty fields
        try:
            yield number, split_tsv_line(line)
        except _Unclosed:
            raise DataFormatError(
                'a quoted field ("...) is not closed on this line; TSV records are one line each '
                "(use .csv or .jsonl for texts with newlines)", path=path, line=number
            ) from None


def iter_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank CSV record (RFC 4180: quoted fields may span lines)."""
    _allow_large_fields()
    reader = csv.reader((text for _, text in iter_lines(path, keep_ends=True)), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataFormatError(f"malformed CSV ({error})", path=path, line=start) from None
        if len(row) > 1 or (row and row[0].strip()):  # skip blank lines, keep rows of empty fields
            yield start, row


def _allow_large_fields() -> None:
    # csv's default limit (128 KiB per field) refuses long documents; the encoder cuts them instead.
    if csv.field_size_limit() < sys.maxsize // 2:
        csv.field_size_limit(sys.maxsize // 2)


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{what} not found: {path}")
    if path.is_dir():
        raise DataFormatError(f"{what} is a folder, not a file: {path}")
    return path
