"""MMEB-style evaluation: each query ranks its own candidate set; the first candidate is the positive.

Data: one jsonl (or parquet) per task with MMEB-eval's fields `qry_text`, `qry_img_path`, `tgt_text` (list)
and `tgt_img_path` (list); a folder holds several tasks (task = file name without extension).

    tasks = load_mmeb("data/mmeb", image_base_dir="data/mmeb/eval_images")
    report = evaluate_mmeb(embedder, tasks, index_dir="indexes/mmeb")
    report.average["precision@1"], report.per_task["N24News"]["recall@5"]

Precision@1 is MMEB's metric (top candidate of the query's own set is the positive). Recall@k is measured
by searching a FAISS index (`embedkit.index`) over the union of all candidates of a task, a harder setting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.multimodal.sequence import MultimodalInput, clean_text


@dataclass(frozen=True)
class MmebExample:
    query: MultimodalInput
    candidates: list[MultimodalInput]  # candidates[0] is the positive


@dataclass
class MmebReport:
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    average: dict[str, float] = field(default_factory=dict)

    def to_markdown(self) -> str:
        metrics = list(self.average)
        lines = ["| task | queries | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
        for task, values in self.per_task.items():
            lines.append(f"| {task} | {int(values['queries'])} | "
                         + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
        lines.append("| **average** | | " + " | ".join(f"{self.average[m]:.4f}" for m in metrics) + " |")
        return "\n".join(lines)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return [value]


def _rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield number, row
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"not valid JSON: {error.msg}", path=path, line=number) from error


def read_mmeb_task(path: str | Path, *, image_base_dir: str | Path | None = None) -> list[MmebExample]:
    """Examples of one task file. Image paths stay relative; `image_base_dir` resolves them."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file", path=path)
    base = Path(image_base_dir) if image_base_dir else None
    examples = []

    def image_ref(value):
        if value in (None, ""):
            return None
        if base is not None and not str(value).startswith(("http://", "https://", "data:", "/")):
            return str(base / value)
        return value

    for number, row in _rows(path):
        query_text, query_image = clean_text(row.get("qry_text")), image_ref(row.get("qry_img_path"))
        if query_text is None and query_image is None:
            raise DataFormatError("the query needs qry_text or qry_img_path", path=path, line=number,
                                  fields_found=row.keys())
        texts, images = _as_list(row.get("tgt_text")), _as_list(row.get("tgt_img_path"))
        count = max(len(texts), len(images))
        if count == 0:
            raise DataFormatError("no candidates: tgt_text / tgt_img_path are empty", path=path, line=number)
        candidates = []
        for index in range(count):
            text = clean_text(texts[index]) if index < len(texts) else None
            image = image_ref(images[index]) if index < len(images) else None
            if text is None and image is None:
                raise DataFormatError(f"candidate {index} has neither text nor image", path=path,
                                      line=number, field="tgt_text")
            candidates.append(MultimodalInput(text=text, image=image))
        examples.append(MmebExample(MultimodalInput(text=query_text, image=query_image), candidates))
    if not examples:
        raise DataFormatError("no examples", path=path)
    return examples


def load_mmeb(path: str | Path, *, image_base_dir: str | Path | None = None) -> dict[str, list[MmebExample]]:
    """Tasks from a file or from every .jsonl / .parquet file in a folder."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.glob("*") if p.suffix in (".jsonl", ".parquet"))
    if not files:
        raise EmbedkitError(f"{path}: no MMEB task files (.jsonl or .parquet)")
    return {file.stem: read_mmeb_task(file, image_base_dir=image_base_dir) for file in files}


def _key(item: MultimodalInput) -> tuple:
    image = item.image if isinstance(item.image, (str, type(None))) else id(item.image)
    return (item.text, image, item.instruction)


def evaluate_task(embedder, examples: Sequence[MmebExample], *, query_instruction: str | None = None,
                  index_dir: str | Path | None = None, k_values: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Precision@1 over each query's candidates; recall@k over an index of all the task's candidates."""
    unique: dict[tuple, int] = {}
    pool: list[MultimodalInput] = []
    for example in examples:
        for candidate in example.candidates:
            if _key(candidate) not in unique:
                unique[_key(candidate)] = len(pool)
                pool.append(candidate)
    candidate_vectors = embedder.encode_documents(pool)
    query_vectors = embedder.encode_queries([example.query for example in examples], instruction=query_instruction)
    hits = 0
    for row, example in enumerate(examples):
        columns = [unique[_key(c)] for c in example.candidates]
        scores = candidate_vectors[columns] @ query_vectors[row]
        hits += int(np.argmax(scores) == 0)  # ties go to the first, as in MMEB's argmax
    metrics = {"queries": float(len(examples)), "precision@1": hits / len(examples)}
    if index_dir is not None:
        metrics.update(_index_recall(embedder, pool, candidate_vectors, query_vectors,
                                     [unique[_key(e.candidates[0])] for e in examples], index_dir, k_values))
    return metrics


def _index_recall(embedder, pool, candidate_vectors, query_vectors, positives, index_dir, k_values):
    from embedkit.data import Document
    from embedkit.index import Index, write_dense_index

    documents = [Document(id=str(i), text=item.text or "", title=str(item.image) if isinstance(item.image, str)
                          else "") for i, item in enumerate(pool)]
    write_dense_index(index_dir, candidate_vectors, documents, embedder.spec(), factory="Flat", overwrite=True)
    index = Index.load(index_dir)
    ranked = index.search_vectors(query_vectors, k=max(k_values), with_text=False)
    result = {}
    for k in k_values:
        found = sum(str(positive) in {hit.id for hit in hits[:k]} for positive, hits in zip(positives, ranked, strict=True))
        result[f"recall@{k}"] = found / len(positives)
    return result


def evaluate_mmeb(embedder, tasks: dict[str, list[MmebExample]], *, index_dir: str | Path | None = None,
                  k_values: Sequence[int] = (1, 5, 10),
                  query_instructions: dict[str, str] | None = None) -> MmebReport:
    """Per-task metrics and their unweighted average over tasks (MMEB averages tasks, not queries)."""
    report = MmebReport()
    for task, examples in tasks.items():
        task_index = Path(index_dir) / task if index_dir is not None else None
        report.per_task[task] = evaluate_task(embedder, examples, index_dir=task_index, k_values=k_values,
                                              query_instruction=(query_instructions or {}).get(task))
    metrics = [m for m in next(iter(report.per_task.values())) if m != "queries"]
    report.average = {m: float(np.mean([values[m] for values in report.per_task.values()])) for m in metrics}
    return report
