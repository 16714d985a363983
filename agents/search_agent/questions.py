"""Question files for agent runs: jsonl in the shapes QA data sets ship in.

Recognised fields (first present wins):
- id: `id`, `_id`, `question_id`, `qid` (the line number when absent)
- question: `question`, `question_text`, `text`, `query`, or Search-R1 / verl's `prompt[0].content`
- answers: `answers`, `golden_answers`, `answer`, HotpotQA-style `answers_objects[].spans`, or verl's
  `reward_model.ground_truth` (a string, a list, or `{"target": [...]}`). Absent answers are allowed: such
  questions are run and recorded but not scored.

    questions = load_questions("../shared/data/hotpotqa_dev500/dev_subsampled.jsonl")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.data import iter_json_lines
from embedkit.errors import DataFormatError

ID_FIELDS = ("id", "_id", "question_id", "qid")
QUESTION_FIELDS = ("question", "question_text", "text", "query")
ANSWER_FIELDS = ("answers", "golden_answers", "answer")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)


def load_questions(path: str | Path, *, start: int = 0, limit: int | None = None) -> list[Question]:
    """Questions `start` … `start + limit - 1` (0-based, in file order) of a jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("questions file not found", path=path)
    out: list[Question] = []
    seen: set[str] = set()
    for line_no, record in iter_json_lines(path):
        question = _parse(record, path, line_no)
        if question.id in seen:
            raise DataFormatError(f"duplicate question id '{question.id}'", path=path, line=line_no)
        seen.add(question.id)
        out.append(question)
    if not out:
        raise DataFormatError("no questions in file", path=path)
    end = None if limit is None else start + limit
    return out[start:end]


def _parse(record: dict[str, Any], path: Path, line: int) -> Question:
    qid = next((str(record[f]) for f in ID_FIELDS if record.get(f) not in (None, "")), str(line))
    text = next((record[f] for f in QUESTION_FIELDS if isinstance(record.get(f), str)), None)
    if text is None and isinstance(record.get("prompt"), list) and record["prompt"]:
        first = record["prompt"][0]
        text = first.get("content") if isinstance(first, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(
            f"no question text (looked for {', '.join(QUESTION_FIELDS)}, prompt[0].content)",
            path=path, line=line, fields_found=record,
        )
    return Question(id=qid, question=text.strip(), answers=_answers(record, path, line))


def _answers(record: dict[str, Any], path: Path, line: int) -> list[str]:
    value: Any = next((record[f] for f in ANSWER_FIELDS if f in record), None)
    if value is None and isinstance(record.get("answers_objects"), list):
        value = [span for obj in record["answers_objects"] if isinstance(obj, dict) for span in obj.get("spans", [])]
    if value is None and isinstance(record.get("reward_model"), dict):
        value = record["reward_model"].get("ground_truth")
    if isinstance(value, dict):
        value = value.get("target", value.get("answers", value.get("answer")))
    if value is None:
        return []
    if isinstance(value, str | int | float):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise DataFormatError("answers must be a string or a list of strings", path=path, line=line,
                              field="answers")
    return [str(v) for v in value if str(v).strip()]
