"""Question files for agent runs: jsonl or parquet in the shapes QA data sets ship in.

Recognised fields (first present wins):
- id: `id`, `_id`, `question_id`, `qid`, else `extra_info.index` (the row number when absent)
- question: `question`, `question_text`, `text`, `query`, `extra_info.question`, or Search-R1 / verl's
  `prompt[0].content` (its "Question: …" tail when it is a whole Search-R1 instruction). A `prompt[0].content`
  that is more than the question is kept as the question's own `prompt` (`AgentConfig.prompt_source`).
- answers: answer *lists* win over strings, since a list joined into one string cannot be scored: `answers`,
  `golden_answers` (FlashRAG, Search-R1), `extra_info.answer` (verl NQ-open), HotpotQA-style
  `answers_objects[].spans`, verl's `reward_model.ground_truth` as a list or `{"target": [...]}`, `answer`;
  only when none of them holds a list is a string used (`answer`, `answers`, a string `ground_truth` — which
  in verl NQ files is the list joined with ", "). Absent answers are allowed: such questions are run and
  recorded but not scored.
- data_source: `data_source` (Search-R1's nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle),
  else the data set's name from the path (`nq/test.jsonl` → nq, `bamboogle_test.jsonl` → bamboogle_test).

    questions = load_questions("../shared/data/qa_questions/nq_open_test.jsonl")
    questions = load_questions("search_r1_data/test.parquet")       # several data sources in one file
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.data import iter_json_lines
from embedkit.errors import DataFormatError

ID_FIELDS = ("id", "_id", "question_id", "qid")
QUESTION_FIELDS = ("question", "question_text", "text", "query")
QUESTION_MARKER = "Question:"
SPLIT_NAMES = frozenset({"train", "dev", "test", "val", "valid", "validation", "questions", "data"})


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    data_source: str = ""
    # The file's own first user message (verl `prompt[0].content`) when it is more than the question: Search-R1's
    # files hold the exact instruction a checkpoint was trained with there.
    prompt: str | None = None


def load_questions(path: str | Path, *, start: int = 0, limit: int | None = None) -> list[Question]:
    """Questions `start` … `start + limit - 1` (0-based, in file order) of a jsonl or parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("questions file not found", path=path)
    out: list[Question] = []
    seen: set[str] = set()
    default_source = source_name(path)
    for line_no, record in _records(path):
        if not isinstance(record, dict):
            raise DataFormatError("expected a JSON object per line", path=path, line=line_no)
        question = _parse(record, path, line_no, default_source)
        if question.id in seen:
            raise DataFormatError(f"duplicate question id '{question.id}'", path=path, line=line_no)
        seen.add(question.id)
        out.append(question)
    if not out:
        raise DataFormatError("no questions in file", path=path)
    end = None if limit is None else start + limit
    return out[start:end]


def source_name(path: Path) -> str:
    """The data set a file holds, from its name; a split-named file (`nq/test.jsonl`) takes its folder's name."""
    stem = path.name.split(".")[0]
    if stem.lower() in SPLIT_NAMES and path.parent.name:
        return path.parent.name
    return stem


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    if path.name.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
        except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
            raise DataFormatError(f"not a readable parquet file: {str(error).splitlines()[0]}", path=path) from None
        return
    yield from iter_json_lines(path)


def _parse(record: dict[str, Any], path: Path, line: int, default_source: str) -> Question:
    extra = _mapping(record.get("extra_info"))
    qid = next((str(record[f]) for f in ID_FIELDS if record.get(f) not in (None, "")), None)
    if qid is None:
        qid = str(extra["index"]) if extra.get("index") not in (None, "") else str(line)
    prompt = _first_user_message(record.get("prompt"))
    text = next((record[f] for f in QUESTION_FIELDS if isinstance(record.get(f), str)), None)
    if text is None and isinstance(extra.get("question"), str):
        text = extra["question"]
    if text is None and prompt is not None:
        # Search-R1's parquet keeps only the whole instruction; its question is the "Question: …" tail.
        at = prompt.rfind(QUESTION_MARKER)
        tail = prompt[at + len(QUESTION_MARKER) :].strip() if at != -1 else ""
        text = tail or prompt
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(
            f"no question text (looked for {', '.join(QUESTION_FIELDS)}, extra_info.question, prompt[0].content)",
            path=path, line=line, fields_found=record,
        )
    source = record.get("data_source")
    text = text.strip()
    return Question(id=qid, question=text, answers=answer_list(record, path=path, line=line),
                    data_source=str(source) if source not in (None, "") else default_source,
                    prompt=prompt if prompt is not None and prompt.strip() != text else None)  # fmt: skip


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first_user_message(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list | tuple):
        for message in prompt:
            if isinstance(message, dict) and message.get("role", "user") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else None
    return None


def answer_list(record: dict[str, Any], *, path: str | Path | None = None, line: int | None = None) -> list[str]:
    """The accepted answers of a QA record, preferring a list over a joined string (see the module docstring)."""
    extra = _mapping(record.get("extra_info"))
    reward = _mapping(record.get("reward_model"))
    ground_truth = reward.get("ground_truth")
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("target", ground_truth.get("answers", ground_truth.get("answer")))
    spans = None
    if isinstance(record.get("answers_objects"), list):
        spans = [span for obj in record["answers_objects"] if isinstance(obj, dict) for span in obj.get("spans", [])]
    candidates = [("answers", record.get("answers")), ("golden_answers", record.get("golden_answers")),
                  ("extra_info.answer", extra.get("answer")), ("answers_objects", spans),
                  ("reward_model.ground_truth", ground_truth), ("answer", record.get("answer"))]  # fmt: skip
    present = [(name, value) for name, value in candidates if value is not None]
    if not present:
        return []
    name, value = next(((n, v) for n, v in present if isinstance(v, list | tuple)), present[0])
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | int | float) for v in value):
        raise DataFormatError("answers must be a string or a list of strings", path=path, line=line, field=name)
    return [str(v) for v in value if str(v).strip()]
