"""MMEB-style evaluation: each query ranks its own candidate set; the first candidate is the positive.

Data: one jsonl (or parquet) per task with MMEB-eval's fields `qry_text`, `qry_img_path`, `tgt_text` (list)
and `tgt_img_path` (list); a folder holds several tasks (task = file name without extension), or is a
snapshot of the hub dataset (`TIGER-Lab/MMEB-eval`: one folder per task with `test-*.parquet`); `hf:NAME`
reads the hub dataset through `datasets` (each task is a config with a `test` split).

    tasks = load_mmeb("data/MMEB-eval", image_base_dir="data/MMEB-eval/eval_images")
    report = evaluate_mmeb(embedder, tasks, index_dir="indexes/mmeb")
    report.average["precision@1"], report.per_task["N24News"]["recall@5"]
    report.summary["precision@1"]["IND"]        # MMEB-V1 leaderboard columns, when the tasks are MMEB-V1's

MMEB-V1 as published (VLM2Vec): 36 tasks in four categories; the 20 tasks of MMEB-train are
in-distribution (IND), the other 16 out-of-distribution (OOD). The leaderboard reports precision@1
averaged over the tasks of each category, of IND, of OOD and over all 36 (tasks, not queries, weigh equally).

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

MMEB_V1_CATEGORIES = ("classification", "vqa", "retrieval", "grounding")
_IND, _OOD = "IND", "OOD"
#: task -> (category, IND/OOD), in the published order.
MMEB_V1_TASKS: dict[str, tuple[str, str]] = {
    **{t: ("classification", _IND) for t in ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397")},
    **{t: ("classification", _OOD) for t in ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")},
    **{t: ("vqa", _IND) for t in ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W")},
    **{t: ("vqa", _OOD) for t in ("ScienceQA", "VizWiz", "GQA", "TextVQA")},
    **{t: ("retrieval", _IND) for t in ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i",
                                        "MSCOCO_i2t", "NIGHTS", "WebQA")},
    **{t: ("retrieval", _OOD) for t in ("FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS")},
    **{t: ("grounding", _IND) for t in ("MSCOCO",)},
    **{t: ("grounding", _OOD) for t in ("RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")},
}
MMEB_V1_HUB_ID = "TIGER-Lab/MMEB-eval"


def mmeb_v1_summary(per_task: dict[str, float]) -> dict[str, float]:
    """Leaderboard columns from per-task scores: each category, IND, OOD and overall, as unweighted
    means over tasks. Tasks outside MMEB-V1 are ignored; a column whose tasks are not all present is
    left out (a partial average would not be comparable with published numbers)."""
    groups: dict[str, list[str]] = {c: [] for c in MMEB_V1_CATEGORIES}
    groups.update({_IND: [], _OOD: [], "overall": []})
    for task, (category, split) in MMEB_V1_TASKS.items():
        groups[category].append(task)
        groups[split].append(task)
        groups["overall"].append(task)
    return {column: float(np.mean([per_task[t] for t in tasks]))
            for column, tasks in groups.items() if all(t in per_task for t in tasks)}


@dataclass(frozen=True)
class MmebExample:
    query: MultimodalInput
    candidates: list[MultimodalInput]  # candidates[0] is the positive


@dataclass
class MmebReport:
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    average: dict[str, float] = field(default_factory=dict)
    #: metric -> MMEB-V1 leaderboard column (classification, vqa, retrieval, grounding, IND, OOD, overall)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_markdown(self) -> str:
        metrics = list(self.average)
        lines = ["| task | category | split | queries | " + " | ".join(metrics) + " |",
                 "|" + "---|" * (len(metrics) + 4)]
        for task, values in self.per_task.items():
            category, split = MMEB_V1_TASKS.get(task, ("", ""))
            lines.append(f"| {task} | {category} | {split} | {int(values['queries'])} | "
                         + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
        lines.append("| **average** | | | | " + " | ".join(f"{self.average[m]:.4f}" for m in metrics) + " |")
        columns = [c for c in (*MMEB_V1_CATEGORIES, _IND, _OOD, "overall")
                   if any(c in values for values in self.summary.values())]
        if columns:
            lines += ["", "MMEB-V1 (mean over tasks)", "", "| metric | " + " | ".join(columns) + " |",
                      "|" + "---|" * (len(columns) + 1)]
            for metric, values in self.summary.items():
                lines.append(f"| {metric} | " + " | ".join(
                    f"{values[c]:.4f}" if c in values else "" for c in columns) + " |")
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
    return _examples(_rows(path), path, image_base_dir)


def _examples(rows, path: Path, image_base_dir) -> list[MmebExample]:
    base = Path(image_base_dir) if image_base_dir else None
    examples = []

    def image_ref(value):
        if value in (None, ""):
            return None
        if base is not None and not str(value).startswith(("http://", "https://", "data:", "/")):
            return str(base / value)
        return value

    for number, row in rows:
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


def load_mmeb(path: str | Path, *, image_base_dir: str | Path | None = None,
              tasks: Sequence[str] | None = None, split: str = "test") -> dict[str, list[MmebExample]]:
    """Tasks from a file, from every .jsonl / .parquet file in a folder, from a hub snapshot's layout
    (`<folder>/<Task>/<split>-*.parquet`), or from the hub (`hf:TIGER-Lab/MMEB-eval`). `tasks` picks
    some by name (default: all found; for `hf:` all 36 MMEB-V1 tasks)."""
    text = str(path)
    if text.startswith("hf:"):
        return _load_mmeb_hub(text[3:], tasks or list(MMEB_V1_TASKS), split, image_base_dir)
    path = Path(path)
    if path.is_file():
        found = {path.stem: [path]}
    else:
        found = {p.stem: [p] for p in sorted(path.glob("*")) if p.suffix in (".jsonl", ".parquet")}
        for folder in sorted(p for p in path.glob("*") if p.is_dir()):
            shards = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}.parquet"))
            if shards:
                found.setdefault(folder.name, shards)
    if tasks is not None:
        missing = [t for t in tasks if t not in found]
        if missing:
            raise EmbedkitError(f"{path}: no data for tasks {missing}")
        found = {t: found[t] for t in tasks}
    if not found:
        raise EmbedkitError(f"{path}: no MMEB task files (.jsonl or .parquet, or <Task>/{split}-*.parquet)")
    result = {}
    for task, files in found.items():
        examples = [e for file in files for e in read_mmeb_task(file, image_base_dir=image_base_dir)]
        result[task] = examples
    return result


def _load_mmeb_hub(name: str, tasks: Sequence[str], split: str, image_base_dir) -> dict[str, list[MmebExample]]:
    """Each task is a config of the hub dataset; rows are read like a parquet file's."""
    from datasets import load_dataset

    result = {}
    for task in tasks:
        try:
            rows = load_dataset(name, task, split=split)
        except Exception as error:  # noqa: BLE001 - any hub failure is the user's to fix (network, name)
            raise EmbedkitError(f"cannot load {name} task {task} ({split}) from the hub: {error}") from None
        result[task] = _examples(enumerate(rows, 1), Path(f"hf:{name}/{task}"), image_base_dir)
    return result


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
    for metric in metrics:
        columns = mmeb_v1_summary({task: values[metric] for task, values in report.per_task.items()})
        if columns:
            report.summary[metric] = columns
    return report
