"""Preference pairs: the unit every reward-model benchmark scores (one prompt, a chosen and a rejected response).

Files read by `load_pairs` (jsonl, json, or parquet; one record per row):

- RewardBench layout: `prompt`, `chosen`, `rejected` (strings), optional `subset`, `id`.
- RM-Bench layout: `chosen` and `rejected` are lists of the same responses in three styles (concise, detailed
  plain text, detailed markdown); every (chosen[i], rejected[j]) combination becomes one pair, tagged with its
  difficulty as RM-Bench scores it: `hard` when the chosen response is the less styled one (i < j), `normal`
  on the diagonal, `easy` when i > j. The subset is `subset`, else `domain`.
- Chat layout (HH-RLHF, UltraFeedback-binarized): `chosen` / `rejected` are message lists; the last assistant
  message is the response and the messages before it are the prompt when `prompt` is absent.
- JudgeBench layout (github ScalerLab/JudgeBench `data/*.jsonl`): `question`, `response_A`, `response_B` and
  `label` "A>B" or "B>A" (which response is better); subset `source`, id `pair_id`.
- RMB layout (github Zhou-Zoey/RMB-Reward-Model-Benchmark `RMB_dataset/`, JSON lists): pairwise records hold
  `conversation_input` (the chat), `chosen` and `reject` as `{"answer": …}`, id `pair_uid`; Best-of-N records
  hold `bon_best` and `loser_list`, one pair per loser, grouped by `bon_uid` (the evaluation reports RMB's BoN
  accuracy: the best must beat every loser). The subset is `category_path`.
- PPE human-preference layout (lmarena-ai/PPE-Human-Preference-V1): `prompt`, `response_1`, `response_2` and
  `winner` "model_a" (response_1 better) or "model_b"; ties ("tie", "tie (bothbad)") name no better response
  and are left out, as PPE's accuracy leaves them out (counted in `load_pairs`' log). Subset `ppe_human`.
- PPE correctness layout (lmarena-ai/PPE-*-Best-of-K): `prompt`, `scores` (one correctness label per
  response) and `response_1` … `response_K`; each row gives one pair, its first correct response against its
  first incorrect one (none when all are right or all wrong), subset `ppe_<benchmark>` after the file name
  (`agents/rewards/ppe.py` also scores these rows with per-response rewards: best-of-K and PPE's other metrics).

    pairs = load_pairs("reward-bench.parquet")
    write_pairs("pairs.jsonl", pairs)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError

log = logging.getLogger(__name__)

RMBENCH_STYLES = ("concise", "detailed", "markdown")


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    subset: str = "default"
    tags: dict[str, str] = field(default_factory=dict)  # e.g. {"difficulty": "hard"} for RM-Bench
    group: str = ""  # pairs scored together (an RMB Best-of-N item: one pair per loser)

    def shown(self, swapped: bool) -> tuple[str, str]:
        """Responses A and B as a judge sees them: the chosen one first unless `swapped`."""
        return (self.rejected, self.chosen) if swapped else (self.chosen, self.rejected)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        if not self.tags:
            record.pop("tags")
        if not self.group:
            record.pop("group")
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


def _ranked_responses(record: dict[str, Any], path: Path, line: int | None, names: tuple[str, str], *,
                      first_wins: bool, prompt_field: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of a layout that stores two responses and says which one won."""
    first, second = (_text(record[name], path, line, name) for name in names)
    prompt = _prompt_of(record, path, line)
    if prompt is None:
        raise DataFormatError("missing field", path=path, line=line, field=prompt_field, fields_found=record)
    return (prompt, first, second) if first_wins else (prompt, second, first)


def _judgebench(record: dict[str, Any], path: Path, line: int | None) -> list[PreferencePair]:
    label = record.get("label")
    if label not in ("A>B", "B>A"):
        raise DataFormatError(f"JudgeBench layout: 'label' must be \"A>B\" or \"B>A\", got {label!r}",
                              path=path, line=line, field="label")  # fmt: skip
    prompt, chosen, rejected = _ranked_responses(record, path, line, ("response_A", "response_B"),
                                                 first_wins=label == "A>B", prompt_field="question")
    pid = str(record.get("pair_id", line))
    return [PreferencePair(pid, prompt, chosen, rejected, str(record.get("source") or "judgebench"))]


def _answer(value: Any, path: Path, line: int | None, name: str) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("answer"), str):
        raise DataFormatError(f"RMB layout: '{name}' must be an object with an 'answer' string", path=path,
                              line=line, field=name)  # fmt: skip
    return value["answer"]


def _rmb(record: dict[str, Any], path: Path, line: int | None) -> list[PreferencePair]:
    chat = record["conversation_input"]
    if not isinstance(chat, list) or not chat or not all(isinstance(m, dict) and "content" in m for m in chat):
        raise DataFormatError("RMB layout: 'conversation_input' must be a list of {role, content} messages",
                              path=path, line=line, field="conversation_input")  # fmt: skip
    prompt = _prompt_of({"prompt": chat}, path, line) or ""
    subset = str(record.get("category_path") or "rmb")
    if "bon_best" in record:
        losers = record.get("loser_list")
        if not isinstance(losers, list) or not losers:
            raise DataFormatError("RMB Best-of-N layout: 'loser_list' must be a non-empty list", path=path,
                                  line=line, field="loser_list")  # fmt: skip
        best = _answer(record["bon_best"], path, line, "bon_best")
        uid = str(record.get("bon_uid", line))
        return [PreferencePair(f"{uid}/{k}", prompt, best, _answer(loser, path, line, "loser_list"), subset,
                               group=uid) for k, loser in enumerate(losers)]  # fmt: skip
    for name in ("chosen", "reject"):
        if name not in record:
            raise DataFormatError("missing field", path=path, line=line, field=name, fields_found=record)
    return [PreferencePair(str(record.get("pair_uid", line)), prompt, _answer(record["chosen"], path, line, "chosen"),
                           _answer(record["reject"], path, line, "reject"), subset)]  # fmt: skip


PPE_TIES = ("tie", "tie (bothbad)")


def _ppe(record: dict[str, Any], path: Path, line: int | None) -> list[PreferencePair]:
    winner = record.get("winner")
    if winner in PPE_TIES:
        return []
    if winner not in ("model_a", "model_b"):
        raise DataFormatError(f"PPE layout: 'winner' must be model_a, model_b or a tie, got {winner!r}",
                              path=path, line=line, field="winner")  # fmt: skip
    prompt, chosen, rejected = _ranked_responses(record, path, line, ("response_1", "response_2"),
                                                 first_wins=winner == "model_a", prompt_field="prompt")
    pid = str(record.get("question_id", record.get("id", line)))
    return [PreferencePair(pid, prompt, chosen, rejected, str(record.get("subset") or "ppe_human"))]


def _layout(record: dict[str, Any]) -> Any:
    """The reader of a benchmark's own layout, or None for the prompt/chosen/rejected layouts."""
    if "response_A" in record and "response_B" in record:
        return _judgebench
    if "conversation_input" in record:
        return _rmb
    if "response_1" in record and "winner" in record:
        return _ppe
    if "response_1" in record and "scores" in record:  # a PPE correctness (Best-of-K) row
        from agents.rewards.ppe import correctness_pairs_of_record

        return correctness_pairs_of_record
    return None


def pairs_from_record(record: dict[str, Any], *, path: Path, line: int | None) -> list[PreferencePair]:
    """The pairs one record holds (one for RewardBench/chat/JudgeBench/RMB pairwise/PPE layouts, nine for
    RM-Bench, one per loser for RMB Best-of-N, none for a PPE tie)."""
    reader = _layout(record)
    if reader is not None:
        return reader(record, path, line)
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
    ties = 0
    for line, record in _records(path):
        found = pairs_from_record(record, path=path, line=line)
        ties += not found
        for pair in found:
            if wanted is not None and pair.subset not in wanted:
                continue
            if pair.id in seen:
                raise DataFormatError(f"duplicate pair id '{pair.id}'", path=path, line=line, field="id")
            seen.add(pair.id)
            pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            return pairs[:limit]
    if ties:
        log.warning("%s: %d records name no better response (PPE ties, or correctness rows whose responses are "
                    "all right or all wrong) and are not scored", path, ties)
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
