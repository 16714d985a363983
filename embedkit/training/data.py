"""Training data: jsonl / parquet / hub rows and BEIR train qrels, read into per-task query groups.

A *group* is one query with its positives and hard negatives (one row, or one BEIR query with all its
judged-relevant documents). Sampling (BOOM bags, history subsets) works on groups; `to_dataset` expands
groups into (anchor, positive, negative_1..k) rows for sentence-transformers losses.

Row layouts read (each cell a string or a list of strings; `prompt` is an optional per-row instruction):

| layout | query | positives | negatives |
|---|---|---|---|
| FlagEmbedding | `query` | `pos` | `neg` |
| sentence-transformers triplets / n-tuples | `anchor`, `query` or `question` | `positive` (pairs: also `answer`, `document`, `pos`) | `negative`, `negative_1..k`, `negatives` or `neg` |
| sentence pairs | `sentence1` | `sentence2` | (none) |

Columns that hold no training text (ids and scores such as `positive_id` or `neg_scores`, `type`, `source`)
are ignored; `instruction` is read as `prompt`. A row is refused with its file, line and columns, never
read partly, when it names no query or positive column, when two columns claim the same role (`query` and
`anchor`, `neg` and `negative`), when another column could hold text (`hard_negatives`, `negative_passages`,
`text`, …), or when it carries a `label` or `score` column (pair-classification / similarity rows: their
second text is not necessarily a positive).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from embedkit.errors import DataFormatError
from embedkit.training.config import DatasetConfig


@dataclass(frozen=True)
class QueryGroup:
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    instruction: str | None = None  # per-row prompt (FlagEmbedding `prompt`); overrides the task's


@dataclass(frozen=True)
class TaskData:
    """One task's groups plus its settings (weight, instruction, hard-negative count, stage)."""

    config: DatasetConfig
    groups: tuple[QueryGroup, ...]
    source_rows: int = 0  # groups in the source before any sampling
    sampled_from: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def with_groups(self, groups: Sequence[QueryGroup], **sampling) -> TaskData:
        return replace(self, groups=tuple(groups), sampled_from={**self.sampled_from, **sampling})


def load_task(config: DatasetConfig) -> TaskData:
    """Read one dataset as configured (jsonl, parquet, BEIR folder or `hf:NAME[/CONFIG][:SPLIT]`);
    errors name the file, line and field."""
    from embedkit.training.sources import is_hub

    path = Path(config.path)
    kind = config.format
    if kind == "auto":
        kind = ("hf" if is_hub(config.path) else "beir" if path.is_dir()
                else "parquet" if path.suffix == ".parquet" else "jsonl")
    if kind == "beir":
        groups = _load_beir(path, config.split)
    elif kind == "hf":
        source = config.path if is_hub(config.path) else f"hf:{config.path}"
        groups = _load_rows(source, source, default_split=config.split)
    else:
        if not path.is_file():
            raise DataFormatError("training file not found", path=path)
        groups = _load_rows(path, path)
    if config.max_examples is not None:
        groups = groups[: config.max_examples]
    if not groups:
        raise DataFormatError(f"dataset '{config.name}' has no training examples", path=path)
    return TaskData(config=config, groups=tuple(groups), source_rows=len(groups))


def load_tasks(configs: Sequence[DatasetConfig]) -> list[TaskData]:
    return [load_task(c) for c in configs]


def _as_text_list(value, path: Path, line: int, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError("expected a list of strings", path=path, line=line, field=name)
    return tuple(v for v in value if v.strip())


QUERY_COLUMNS = ("query", "anchor", "question", "sentence1")
POSITIVE_COLUMNS = ("pos", "positive", "answer", "document", "sentence2")
NEGATIVE_COLUMNS = ("neg", "negative", "negatives")  # plus negative_1..k
#: Columns that hold no training text; anything else that looks like a query/passage column is refused.
IGNORED_COLUMNS = frozenset({"id", "_id", "qid", "prompt", "instruction", "type", "source", "dataset", "task"})
#: ids and scores of the texts (`query_id`, `positive_id`, `neg_scores`, `negative_ids`): no text to lose.
IGNORED_SUFFIXES = ("_id", "_ids", "_score", "_scores")
LABEL_COLUMNS = ("label", "labels", "score", "similarity")


def _load_rows(source, path, *, default_split: str = "train") -> list[QueryGroup]:
    """Query groups from rows in any layout of the module docstring; a row that cannot be read in full is
    refused (file, line, columns), never read partly."""
    from embedkit.training.sources import iter_rows

    groups: list[QueryGroup] = []
    for line_no, record in iter_rows(source, default_split=default_split):
        query, pos, neg = _row_roles(record, path, line_no)
        if not isinstance(query, str) or not query.strip():
            raise DataFormatError("missing or empty query", path=path, line=line_no, field="query", fields_found=record)
        positives = _as_text_list(_flatten(pos), path, line_no, "pos")
        if not positives:
            raise DataFormatError("no positive passage", path=path, line=line_no, field="pos", fields_found=record)
        negatives = _as_text_list(_flatten(neg), path, line_no, "neg")
        if record.get("prompt") is not None and record.get("instruction") is not None:
            raise DataFormatError("both `prompt` and `instruction`: keep one (the per-row instruction)", path=path,
                                  line=line_no, field="instruction", fields_found=record)
        prompt = record.get("prompt", record.get("instruction"))
        if prompt is not None and not isinstance(prompt, str):
            raise DataFormatError("expected a string", path=path, line=line_no, field="prompt")
        groups.append(QueryGroup(query, positives, negatives, prompt or None))
    return groups


def _is_negative_column(name: str) -> bool:
    return name in NEGATIVE_COLUMNS or (name.startswith("negative_") and name[len("negative_"):].isdigit())


def _row_roles(record: dict, path, line: int):
    """(query, positives, negatives) cells of one row; refuses layouts that would lose or misread text."""
    columns = sorted(record)

    def refuse(message: str, field: str) -> DataFormatError:
        return DataFormatError(f"{message} (layouts read: see embedkit.training.data)", path=path, line=line,
                               field=field, fields_found=columns)

    labels = [c for c in columns if c in LABEL_COLUMNS]
    if labels:
        raise refuse(f"a '{labels[0]}' column marks pair-classification or similarity rows, whose second text "
                     "is not necessarily a positive; convert them to (query, positive, negatives) rows", labels[0])
    queries = [c for c in QUERY_COLUMNS if c in record]
    if len(queries) > 1:
        raise refuse(f"columns {queries} all look like the query; keep one", queries[1])
    positives = [c for c in POSITIVE_COLUMNS if c in record]
    if queries == ["sentence1"] and positives not in ([], ["sentence2"]) or \
            "sentence2" in positives and queries != ["sentence1"]:
        raise refuse("sentence1/sentence2 pairs take no other query or positive column", "sentence2")
    if len(positives) > 1:
        raise refuse(f"columns {positives} all look like positives; keep one", positives[1])
    negatives = [c for c in columns if _is_negative_column(c)]
    if "neg" in negatives and len(negatives) > 1:
        raise refuse(f"columns {negatives} all look like negatives; use `neg` alone or `negative`/`negative_1..k`",
                     negatives[1])
    unknown = [c for c in columns if c not in IGNORED_COLUMNS and not c.endswith(IGNORED_SUFFIXES)
               and c not in queries and c not in positives and c not in negatives]
    if unknown:
        raise refuse(f"column '{unknown[0]}' is not a column embedkit reads; rename it to one of the layouts "
                     "(its text would otherwise be dropped)", unknown[0])
    negatives.sort(key=_negative_order)
    return (record[queries[0]] if queries else None,
            record[positives[0]] if positives else None,
            [record[c] for c in negatives if record[c] is not None] or None)


def _negative_order(key: str) -> tuple[int, str]:
    suffix = key.rpartition("_")[2]
    return (int(suffix), key) if suffix.isdigit() else (0, key)


def _flatten(value):
    # Cells of several negative columns (and sentence-transformers list cells) may each hold a string or a list.
    if isinstance(value, list) and any(isinstance(v, list) for v in value):
        return [x for v in value for x in (_flatten(v) if isinstance(v, list) else [v])]
    return value


def _load_beir(folder: Path, split: str) -> list[QueryGroup]:
    from embedkit.data import iter_documents, load_qrels, load_queries

    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataFormatError(f"BEIR folder has no qrels/{split}.tsv", path=folder)
    qrels = load_qrels(qrels_path)
    queries = load_queries(folder / "queries.jsonl")
    wanted = {doc_id for judged in qrels.values() for doc_id, rel in judged.items() if rel > 0}
    texts = {doc.id: doc.joined() for doc in iter_documents(folder / "corpus.jsonl") if doc.id in wanted}
    groups = []
    for query_id, judged in qrels.items():  # qrels file order keeps sampling reproducible
        if query_id not in queries:
            raise DataFormatError(f"query '{query_id}' is judged but not in queries.jsonl", path=qrels_path)
        positives = tuple(texts[d] for d, rel in judged.items() if rel > 0 and d in texts)
        if positives:
            groups.append(QueryGroup(queries[query_id], positives))
    return groups


def write_jsonl(groups: Sequence[QueryGroup], path: str | Path) -> Path:
    """Write groups as FlagEmbedding jsonl (the format `embedkit boom update --new-data` reads)."""
    from embedkit.io import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        for group in groups:
            record = {"query": group.query, "pos": list(group.positives), "neg": list(group.negatives)}
            if group.instruction:
                record["prompt"] = group.instruction
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def apply_weight(task: TaskData, seed: int) -> list[QueryGroup]:
    """Scale a task by its weight: whole repeats plus a random remainder drawn without replacement."""
    groups = list(task.groups)
    weight = task.config.weight
    whole, fraction = int(weight), weight - int(weight)
    rng = random.Random(f"{seed}-weight-{task.name}")
    extra = rng.sample(groups, round(fraction * len(groups)))
    return groups * whole + extra


def query_text(group: QueryGroup, task: DatasetConfig, template: str) -> str:
    instruction = group.instruction or task.instruction
    return template.format(instruction=instruction) + group.query if instruction else group.query


def task_negative_count(task: TaskData, default: int) -> int:
    wanted = task.config.hard_negatives if task.config.hard_negatives is not None else default
    most = max((len(g.negatives) for g in task.groups), default=0)
    return min(wanted, most)


def to_rows(task: TaskData, *, negatives: int, template: str, seed: int) -> dict[str, list[str]]:
    """Columns anchor, positive, negative_1..k. Each (query, positive) pair becomes a row; groups with
    fewer than k negatives are filled by re-drawing their own, and groups without any get random
    passages of other groups of the task (FlagEmbedding's fallback)."""
    rng = random.Random(f"{seed}-rows-{task.name}")
    groups = apply_weight(task, seed)
    pool = [p for g in task.groups for p in g.positives]
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    for i in range(negatives):
        columns[f"negative_{i + 1}"] = []
    for group in groups:
        anchor = query_text(group, task.config, template)
        for positive in group.positives:
            columns["anchor"].append(anchor)
            columns["positive"].append(positive)
            chosen = _pick_negatives(group, negatives, rng, pool)
            for i, text in enumerate(chosen):
                columns[f"negative_{i + 1}"].append(text)
    return columns


def _pick_negatives(group: QueryGroup, k: int, rng: random.Random, pool: list[str]) -> list[str]:
    if k == 0:
        return []
    own = list(group.negatives)
    if len(own) >= k:
        return rng.sample(own, k)
    if own:
        return own + [rng.choice(own) for _ in range(k - len(own))]
    candidates = [p for p in pool if p not in group.positives] or pool
    return [rng.choice(candidates) for _ in range(k)]


def to_dataset(task: TaskData, *, negatives: int, template: str, seed: int):
    """A `datasets.Dataset` for one task (see `to_rows`)."""
    from datasets import Dataset

    return Dataset.from_dict(to_rows(task, negatives=negatives, template=template, seed=seed))
