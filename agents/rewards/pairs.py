"""Preference pairs: the unit every reward-model benchmark scores (one prompt, a chosen and a rejected response).

Files read by `load_pairs` (jsonl, json, or parquet; one record per row):

- RewardBench layout: `prompt`, `chosen`, `rejected` (strings), optional `subset`, `id`.
- RM-Bench layout: `chosen` and `rejected` are lists of the same responses in three styles (concise, detailed
  plain text, detailed markdown); every (chosen[i], rejected[j]) combination becomes one pair, tagged with its
  difficulty as RM-Bench scores it: `hard` when the chosen response is the less styled one (i < j), `normal`
  on the diagonal, `easy` when i > j. The subset is `subset`, else `domain`.
- Chat layout (HH-RLHF, UltraFeedback-binarized): `chosen` / `rejected` are message lists; the last assistant
  message is the response and the messages before it are the prompt when `prompt` is absent.

    pairs = load_pairs("reward-bench.parquet")
    write_pairs("pairs.jsonl", pairs)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError

RMBENCH_STYLES = ("concise", "detailed", "markdown")


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    subset: str = "default"
    tags: dict[str, str] = field(default_factory=dict)  # e.g. {"difficulty": "hard"} for RM-Bench

    def shown(self, swapped: bool) -> tuple[str, str]:
        """Responses A and B as a judge sees them: the chosen one first unless `swapped`."""
        return (self.rejected, self.chosen) if swapped else (self.chosen, self.rejected)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        if not self.tags:
            record.pop("tags")
        return record


def _records(path: Path) -> Iterator[tuple[int | None, dict[str, Any]]]:
    suffix = "".join(s for s in path.suffixes if s != ".gz").lower()
    if suffix.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as error:  # pragma: no cover - pyarrow ships with the base install
            raise DataFormatError(f"reading parquet needs pyarrow: {error}", path=path) from None
        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for damaged files
            raise DataFormatError(f"cannot read parquet: {error}", path=path) from None
        for row, record in enumerate(table.to_pylist(), start=1):
            yield row, record
        return
    if suffix.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataFormatError(f"malformed JSON ({error.msg})", path=path, line=error.lineno) from None
        if isinstance(data, dict):  # {"data": [...]} or a single split keyed by name
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataFormatError("expected a JSON list of records", path=path)
        for row, record in enumerate(data, start=1):
            if not isinstance(record, dict):
                raise DataFormatError(f"record {row} is not an object", path=path)
            yield row, record
        return
    from embedkit.data import iter_json_lines

    yield from iter_json_lines(path)


def _message_text(messages: list[Any], path: Path, line: int | None, name: str) -> tuple[str, str]:
    """(prompt transcript, last assistant message) of a chat."""
    if not messages or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise DataFormatError("a chat must be a list of {role, content} messages", path=path, line=line, field=name)
    last = messages[-1]
    if last.get("role", "assistant") != "assistant":
        raise DataFormatError("the last message of a chat must be the assistant's", path=path, line=line, field=name)
    prompt = "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages[:-1])
    return prompt, str(last["content"])


def _text(value: Any, path: Path, line: int | None, name: str) -> str:
    if isinstance(value, str):
        return value
    raise DataFormatError(f"'{name}' must be a string, got {type(value).__name__}", path=path, line=line, field=name)


def _prompt_of(record: dict[str, Any], path: Path, line: int | None) -> str | None:
    prompt = record.get("prompt", record.get("question", record.get("instruction")))
    if isinstance(prompt, list):  # a chat prompt
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt if isinstance(m, dict))
    if prompt is not None and not isinstance(prompt, str):
        raise DataFormatError("'prompt' must be a string or a chat", path=path, line=line, field="prompt")
    return prompt


def pairs_from_record(record: dict[str, Any], *, path: Path, line: int | None) -> list[PreferencePair]:
    """The pairs one record holds (one for RewardBench/chat layouts, nine for RM-Bench)."""
    for name in ("chosen", "rejected"):
        if name not in record:
            raise DataFormatError("missing field", path=path, line=line, field=name, fields_found=record)
    chosen, rejected = record["chosen"], record["rejected"]
    pid = str(record.get("id", record.get("_id", line)))
    subset = str(record.get("subset") or record.get("domain") or "default")
    prompt = _prompt_of(record, path, line)
    if isinstance(chosen, list) and chosen and all(isinstance(c, str) for c in chosen):  # RM-Bench
        if not isinstance(rejected, list) or len(rejected) != len(chosen) or not all(isinstance(r, str) for r in rejected):
            raise DataFormatError("RM-Bench layout: 'rejected' must be a list of strings as long as 'chosen'",
                                  path=path, line=line, field="rejected")  # fmt: skip
        if prompt is None:
            raise DataFormatError("missing field", path=path, line=line, field="prompt", fields_found=record)
        styles = RMBENCH_STYLES if len(chosen) == len(RMBENCH_STYLES) else tuple(str(i) for i in range(len(chosen)))
        out = []
        for i, good in enumerate(chosen):
            for j, bad in enumerate(rejected):
                difficulty = "hard" if i < j else "normal" if i == j else "easy"
                out.append(PreferencePair(f"{pid}/{i}-{j}", prompt, good, bad, subset,
                                          {"difficulty": difficulty, "styles": f"{styles[i]}>{styles[j]}"}))  # fmt: skip
        return out
    if isinstance(chosen, list):  # chat layout
        chat_prompt, good = _message_text(chosen, path, line, "chosen")
        _, bad = _message_text(_as_list(rejected, path, line), path, line, "rejected")
        return [PreferencePair(pid, prompt if prompt is not None else chat_prompt, good, bad, subset)]
    if prompt is None:
        raise DataFormatError("missing field", path=path, line=line, field="prompt", fields_found=record)
    raw_tags = record.get("tags")
    tags: dict[Any, Any] = raw_tags if isinstance(raw_tags, dict) else {}
    return [PreferencePair(pid, prompt, _text(chosen, path, line, "chosen"), _text(rejected, path, line, "rejected"),
                           subset, {str(k): str(v) for k, v in tags.items()})]  # fmt: skip


def _as_list(value: Any, path: Path, line: int | None) -> list[Any]:
    if not isinstance(value, list):
        raise DataFormatError("'rejected' must be a chat like 'chosen'", path=path, line=line, field="rejected")
    return value


def load_pairs(path: str | Path, *, subsets: Iterable[str] | None = None, limit: int | None = None) -> list[PreferencePair]:
    """Every pair in a RewardBench / RM-Bench / chat-layout file (jsonl, json or parquet)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("pairs file not found", path=path)
    wanted = set(subsets) if subsets else None
    pairs: list[PreferencePair] = []
    seen: set[str] = set()
    for line, record in _records(path):
        for pair in pairs_from_record(record, path=path, line=line):
            if wanted is not None and pair.subset not in wanted:
                continue
            if pair.id in seen:
                raise DataFormatError(f"duplicate pair id '{pair.id}'", path=path, line=line, field="id")
            seen.add(pair.id)
            pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            return pairs[:limit]
    if not pairs:
        raise DataFormatError("no preference pairs" + (f" in subsets {sorted(wanted)}" if wanted else ""), path=path)
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs as RewardBench-style jsonl (atomically)."""
    from embedkit.io import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.to_record(), ensure_ascii=False) + "\n")
    return path
