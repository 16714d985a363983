"""PPE's correctness sets (lmarena "Preference Proxy Evaluations", arXiv 2410.14872): rows of one prompt with
K sampled responses and a correctness label for each, and the metrics PPE reports from per-response rewards.

Layout (hub `lmarena-ai/PPE-{MMLU-Pro,MATH,GPQA,MBPP-Plus,IFEval}-Best-of-K`, split `train`, or the same
columns in a local parquet / jsonl / json file): `question_id`, `model_name` (the LLM that sampled the
responses), `prompt`, `scores` (one bool per response: correct or not), `response_1` … `response_K`; other
columns (the benchmark's own fields, `mean_score`) are ignored. A row is `question_id/model_name`.

Two ways to score a row:

- a pairwise judge (`embedkit rewards eval --pairs FILE`): each row gives one pair, its first correct response
  (lowest index) against its first incorrect one; rows whose responses are all right or all wrong give none;
- per-response rewards from any reward model (`embedkit rewards ppe-correctness --scores FILE`), one jsonl line
  per row: `{"id": "<question_id>/<model_name>", "rewards": [r_1, …, r_K]}`; a null reward is a response the
  model could not score and ranks below every other (PPE maps its `$ERROR$` to -inf).

Metrics per benchmark (`correctness_metrics`), each row (prompt × sampling model) counting once. PPE's own
scoring code (github lmarena/PPE) could not be read when this was written (only its scorer's opening: rewards it
could not compute become -inf, ROC AUC from scikit-learn); the definitions below follow the paper's metric names,
and where PPE's code reads them otherwise (random K-subsets instead of the exact expectation, pairs pooled over
rows, ties counted as losses) its numbers differ from these:

- `accuracy`: per row, over every (correct, incorrect) response pair, the share where the correct one has the
  higher reward (equal rewards count one half); the mean over rows that have such a pair;
- `best_of_k[K]`: the expected correctness of the highest-rewarded response among K responses drawn without
  replacement from the row (exact over all K-subsets; tied rewards break at random), averaged over rows;
  `ground_truth_best_of_k[K]` the same for a perfect reward model (1 − C(N−c, K)/C(N, K) with c correct);
- `end_score` = best_of_k at K = N; `max_achieved` = max over K of best_of_k;
- `loss`: mean over K of (ground_truth_best_of_k[K] − best_of_k[K])²;
- `row_pearson`: the mean over rows of the Pearson correlation of rewards and correctness (rows whose
  rewards or labels are constant have none, and unscored responses are left out);
- `auc`: ROC AUC of the rewards as a classifier of correctness over every response of the benchmark.

    rows = load_correctness("lmarena-ai/PPE-MATH-Best-of-K")
    report = correctness_metrics(rows, load_rewards("rewards.jsonl"))
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.rewards.pairs import PreferencePair
from embedkit.errors import DataFormatError

# Short name -> hub dataset id of PPE's five correctness sets (split "train").
PPE_CORRECTNESS_SETS = {
    "mmlu_pro": "lmarena-ai/PPE-MMLU-Pro-Best-of-K",
    "math": "lmarena-ai/PPE-MATH-Best-of-K",
    "gpqa": "lmarena-ai/PPE-GPQA-Best-of-K",
    "mbpp_plus": "lmarena-ai/PPE-MBPP-Plus-Best-of-K",
    "ifeval": "lmarena-ai/PPE-IFEval-Best-of-K",
}
_NAME_OF_HUB_ID = {hub: name for name, hub in PPE_CORRECTNESS_SETS.items()}


@dataclass(frozen=True)
class CorrectnessRow:
    id: str  # question_id/model_name
    benchmark: str
    prompt: str
    responses: tuple[str, ...]
    correct: tuple[bool, ...]


def correctness_row(record: Mapping[str, Any], *, path: Path | str, line: int | None, benchmark: str) -> CorrectnessRow:
    """One row of the Best-of-K layout, checked: as many `response_i` as `scores` entries, booleans, a prompt."""
    labels = record.get("scores")
    if not isinstance(labels, (list, tuple)) or len(labels) < 2 or not all(
            isinstance(s, bool) or s in (0, 1) for s in labels):  # fmt: skip
        raise DataFormatError("PPE correctness layout: 'scores' must be a list of at least 2 booleans", path=path,
                              line=line, field="scores")  # fmt: skip
    responses = []
    for i in range(1, len(labels) + 1):
        value = record.get(f"response_{i}")
        if not isinstance(value, str):
            raise DataFormatError(f"PPE correctness layout: 'scores' has {len(labels)} labels but response_{i} is "
                                  f"{'missing' if value is None else type(value).__name__}", path=path, line=line,
                                  field=f"response_{i}")  # fmt: skip
        responses.append(value)
    if f"response_{len(labels) + 1}" in record:  # never drop a response silently
        raise DataFormatError(f"PPE correctness layout: response_{len(labels) + 1} has no label in 'scores' "
                              f"({len(labels)} labels)", path=path, line=line, field="scores")  # fmt: skip
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise DataFormatError("missing field", path=path, line=line, field="prompt", fields_found=record)
    qid = record.get("question_id")
    if qid is None:
        raise DataFormatError("missing field", path=path, line=line, field="question_id", fields_found=record)
    model = record.get("model_name")
    row_id = f"{qid}/{model}" if model else str(qid)
    return CorrectnessRow(row_id, benchmark, prompt, tuple(responses), tuple(bool(s) for s in labels))


def benchmark_of(path: Path | str) -> str:
    """The short name of a PPE set from its hub id or file name (`ppe_math.parquet` -> `math`), else the stem."""
    text = str(path)
    if text in _NAME_OF_HUB_ID:
        return _NAME_OF_HUB_ID[text]
    stem = Path(text).name.split(".")[0].lower().replace("-", "_")
    for name in sorted(PPE_CORRECTNESS_SETS, key=len, reverse=True):
        if stem in (name, f"ppe_{name}", f"ppe_{name}_best_of_k"):
            return name
    return stem


def pair_of_row(row: CorrectnessRow) -> list[PreferencePair]:
    """The pair a pairwise judge sees: the first correct response against the first incorrect one."""
    if all(row.correct) or not any(row.correct):
        return []
    good, bad = row.correct.index(True), row.correct.index(False)
    return [PreferencePair(row.id, row.prompt, row.responses[good], row.responses[bad], f"ppe_{row.benchmark}",
                           {"responses": f"{good + 1}>{bad + 1}"})]  # fmt: skip


def correctness_pairs_of_record(record: dict[str, Any], path: Path, line: int | None) -> list[PreferencePair]:
    """`pairs.load_pairs`' reader of a Best-of-K row (benchmark named after the file)."""
    return pair_of_row(correctness_row(record, path=path, line=line, benchmark=benchmark_of(path)))


def _hub_records(hub_id: str) -> Iterable[tuple[int | None, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        rows = load_dataset(hub_id, split="train")
    except Exception as error:  # noqa: BLE001 - offline, unknown name: the user's to fix
        raise DataFormatError(f"cannot load the hub dataset: {type(error).__name__}: {error}", path=hub_id) from None
    return enumerate((dict(r) for r in rows), start=1)


def load_correctness(source: str | Path, *, limit: int | None = None) -> list[CorrectnessRow]:
    """Rows of one PPE correctness set: a local parquet/jsonl/json file, a hub id, or a short name
    (`math`, `mmlu_pro`, `gpqa`, `mbpp_plus`, `ifeval`) for the hub set."""
    from agents.rewards.pairs import _records

    text = PPE_CORRECTNESS_SETS.get(str(source), str(source))
    path = Path(text)
    if path.is_file():
        records: Iterable[tuple[int | None, dict[str, Any]]] = _records(path)
    elif text.count("/") == 1 and not path.exists() and not text.startswith((".", "/")) and not path.suffix:
        records = _hub_records(text)
    else:
        raise DataFormatError("correctness file not found", path=path)
    benchmark = benchmark_of(text)
    rows: list[CorrectnessRow] = []
    seen: set[str] = set()
    for line, record in records:
        row = correctness_row(record, path=text, line=line, benchmark=benchmark)
        if row.id in seen:
            raise DataFormatError(f"duplicate row '{row.id}' (question_id/model_name)", path=text, line=line,
                                  field="question_id")  # fmt: skip
        seen.add(row.id)
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataFormatError("no rows", path=text)
    return rows


def load_rewards(path: str | Path) -> dict[str, list[float | None]]:
    """Per-response rewards, one jsonl line per row: `{"id": ..., "rewards": [number or null, ...]}`."""
    from embedkit.data import iter_json_lines

    path = Path(path)
    if not path.is_file():
        raise DataFormatError("rewards file not found", path=path)
    out: dict[str, list[float | None]] = {}
    for line, record in iter_json_lines(path):
        row_id, rewards = record.get("id"), record.get("rewards")
        if not isinstance(row_id, str):
            raise DataFormatError("'id' must be a string (question_id/model_name)", path=path, line=line, field="id")
        if not isinstance(rewards, list) or not all(
                r is None or (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r))
                for r in rewards):  # fmt: skip
            raise DataFormatError("'rewards' must be a list of finite numbers or nulls", path=path, line=line,
                                  field="rewards")  # fmt: skip
        if row_id in out:
            raise DataFormatError(f"duplicate id '{row_id}'", path=path, line=line, field="id")
        out[row_id] = [None if r is None else float(r) for r in rewards]
    return out


def _row_accuracy(correct: Sequence[bool], rewards: Sequence[float]) -> float | None:
    wins = pairs = 0.0
    for i, ci in enumerate(correct):
        for j, cj in enumerate(correct):
            if ci and not cj:
                pairs += 1
                wins += 1.0 if rewards[i] > rewards[j] else 0.5 if rewards[i] == rewards[j] else 0.0
    return wins / pairs if pairs else None


def _row_best_of_k(correct: Sequence[bool], rewards: Sequence[float], k: int) -> float:
    """E[correctness of the top-rewarded response of a uniform random k-subset], ties broken at random."""
    n = len(correct)
    total = math.comb(n, k)
    expected, above = 0.0, 0
    for value in sorted(set(rewards), reverse=True):
        group = [c for c, r in zip(correct, rewards, strict=True) if r == value]
        # P(the subset's maximum lies in this group) = P(no response above it is drawn, and one of the group is).
        p_group = (math.comb(n - above, k) - math.comb(n - above - len(group), k)) / total
        expected += p_group * sum(group) / len(group)
        above += len(group)
    return expected


def _ground_truth_best_of_k(correct: Sequence[bool], k: int) -> float:
    n, c = len(correct), sum(correct)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _pearson(correct: Sequence[bool], rewards: Sequence[float | None]) -> float | None:
    from scipy.stats import pearsonr

    pairs = [(float(c), r) for c, r in zip(correct, rewards, strict=True) if r is not None]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(pairs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(pearsonr(xs, ys).statistic)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def benchmark_metrics(rows: Sequence[CorrectnessRow], rewards: Mapping[str, Sequence[float | None]], *,
                      rewards_path: str | Path | None = None) -> dict[str, Any]:
    """PPE's correctness metrics for the rows of one benchmark (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    ranked: list[tuple[CorrectnessRow, list[float]]] = []
    raw: list[Sequence[float | None]] = []
    for row in rows:
        given = rewards.get(row.id)
        if given is None:
            raise DataFormatError(f"no rewards for row '{row.id}'", path=rewards_path, field="id")
        if len(given) != len(row.responses):
            raise DataFormatError(f"row '{row.id}' has {len(row.responses)} responses but {len(given)} rewards",
                                  path=rewards_path, field="rewards")  # fmt: skip
        ranked.append((row, [-math.inf if r is None else r for r in given]))
        raw.append(given)
    k_max = min(len(row.responses) for row in rows)
    curve = [_mean(_row_best_of_k(row.correct, r, k) for row, r in ranked) or 0.0 for k in range(1, k_max + 1)]
    truth = [_mean(_ground_truth_best_of_k(row.correct, k) for row, _ in ranked) or 0.0 for k in range(1, k_max + 1)]
    labels = [c for row in rows for c in row.correct]
    finite = [r for _, rs in ranked for r in rs if r != -math.inf]
    floor = (min(finite) - 1.0) if finite else 0.0  # sklearn needs finite scores; same ranking as -inf
    scores = [floor if r == -math.inf else r for _, rs in ranked for r in rs]
    return {
        "rows": len(rows),
        "responses_per_row": k_max,
        "rows_with_pairs": sum(1 for row in rows if any(row.correct) and not all(row.correct)),
        "accuracy": _mean(_row_accuracy(row.correct, r) for row, r in ranked),
        "best_of_k": curve,
        "ground_truth_best_of_k": truth,
        "end_score": curve[-1],
        "max_achieved": max(curve),
        "loss": sum((t - c) ** 2 for t, c in zip(truth, curve, strict=True)) / len(curve),
        "row_pearson": _mean(_pearson(row.correct, given) for row, given in zip(rows, raw, strict=True)),
        "auc": float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None,
    }


METRICS = ("accuracy", "end_score", "max_achieved", "loss", "row_pearson", "auc")


def correctness_metrics(rows: Sequence[CorrectnessRow], rewards: Mapping[str, Sequence[float | None]], *,
                        rewards_path: str | Path | None = None) -> dict[str, Any]:
    """Metrics per benchmark and their unweighted mean over benchmarks (`mean`)."""
    by_benchmark: dict[str, list[CorrectnessRow]] = {}
    for row in rows:
        by_benchmark.setdefault(row.benchmark, []).append(row)
    report: dict[str, Any] = {name: benchmark_metrics(group, rewards, rewards_path=rewards_path)
                              for name, group in sorted(by_benchmark.items())}
    report["mean"] = {m: _mean(report[name][m] for name in by_benchmark) for m in METRICS}
    return report


def metrics_table(report: Mapping[str, Any]) -> str:
    """A Markdown table: one row per benchmark, then the mean."""
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = ["| benchmark | rows | " + " | ".join(METRICS) + " |", "|" + " --- |" * (len(METRICS) + 2)]
    for name, values in report.items():
        count = str(values.get("rows", "")) if name != "mean" else ""
        lines.append(f"| {'**mean**' if name == 'mean' else name} | {count} | "
                     + " | ".join(fmt(values[m]) for m in METRICS) + " |")  # fmt: skip
    return "\n".join(lines)


def write_report(path: str | Path, report: Mapping[str, Any]) -> Path:
    from embedkit.io import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(json.dumps(report, indent=2) + "\n")
    return path
