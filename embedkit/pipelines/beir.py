"""BEIR in one call: encode the corpus, build an index, search the queries of a split, evaluate.

    from embedkit.encoding import EncoderConfig
    from embedkit.pipelines.beir import run_beir
    result = run_beir("../shared/data/scifact", EncoderConfig())
    print(result.metrics["nDCG@10"])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from embedkit.data.corpus import count_documents, iter_documents
from embedkit.data.qrels import load_qrels
from embedkit.data.queries import load_queries
from embedkit.data.runs import Run, write_trec_run
from embedkit.encoding.config import EncoderConfig
from embedkit.encoding.encoder import Encoder
from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.eval import DEFAULT_K, evaluate
from embedkit.index.base import Index
from embedkit.index.dense import build_dense_index
from embedkit.index.manifest import DenseManifest, IndexManifest
from embedkit.io import atomic_write
from embedkit.paths import default_index_dir


@dataclass(frozen=True)
class BeirResult:
    dataset: str
    split: str
    metrics: dict[str, float]
    index_path: Path
    run: Run


def dataset_files(dataset_dir: str | Path, split: str) -> tuple[Path, Path, Path]:
    """corpus.jsonl, queries.jsonl and qrels/<split>.tsv of a BEIR folder, with a clear error when missing."""
    folder = Path(dataset_dir)
    corpus, queries, qrels = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    for path in (corpus, queries, qrels):
        if not path.exists():
            available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
            hint = f" (splits here: {', '.join(available)})" if available and path == qrels else ""
            raise DataFormatError(f"{folder} is not a BEIR dataset: {path.name} is missing{hint}", path=path)
    return corpus, queries, qrels


def default_index_name(dataset_dir: str | Path, model: str, factory: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(dataset_dir).resolve().name}-{Path(model).name}-{factory}")
    return slug.strip("-")


def run_beir(
    dataset_dir: str | Path,
    encoder_config: EncoderConfig,
    *,
    split: str = "test",
    factory: str = "Flat",
    k_values=DEFAULT_K,
    index_path: str | Path | None = None,
    rebuild: bool = False,
    output_dir: str | Path | None = None,
    quiet: bool = False,
    encoder: Encoder | None = None,
) -> BeirResult:
    """Encode → index → search → evaluate. An existing index built with the same encoder is reused."""
    corpus, queries_path, qrels_path = dataset_files(dataset_dir, split)
    qrels = load_qrels(qrels_path)
    queries = {qid: text for qid, text in load_queries(queries_path).items() if qid in qrels}
    if not queries:
        raise DataFormatError(f"no query of {queries_path.name} is judged in {qrels_path.name}", path=qrels_path)
    for query_id in queries:
        if any(ch.isspace() for ch in query_id):
            raise DataFormatError(f"query id {query_id!r} contains whitespace, which the TREC run file this writes "
                                  "cannot hold (columns are whitespace-separated)", path=queries_path)
    encoder = encoder or Encoder(encoder_config)
    index_path = Path(index_path or default_index_dir() / default_index_name(dataset_dir, encoder_config.model, factory))
    if rebuild or not _reusable(index_path, encoder, factory):
        build_dense_index(iter_documents(corpus), encoder, index_path, factory=factory, overwrite=True,
                          total=count_documents(corpus), quiet=quiet, corpus=str(corpus))
    index = Index.load(index_path, encoder=encoder)
    run = index.search_run(queries, k=max(k_values))
    metrics = evaluate(run, qrels, k_values)
    if output_dir is not None:
        output_dir = Path(output_dir)
        write_trec_run(run, output_dir / "run.trec")
        with atomic_write(output_dir / "metrics.json") as handle:
            json.dump({"dataset": str(dataset_dir), "split": split, "model": encoder.spec.model_dump(),
                       "index_factory": factory, "metrics": metrics}, handle, indent=2)
    return BeirResult(dataset=str(dataset_dir), split=split, metrics=metrics, index_path=index_path, run=run)


def _reusable(index_path: Path, encoder: Encoder, factory: str) -> bool:
    """An intact dense index at `index_path` built with this very encoder and factory."""
    try:
        manifest = IndexManifest.load(index_path)
        manifest.check_files(index_path)
    except EmbedkitError:
        return False
    return (isinstance(manifest, DenseManifest) and manifest.encoder == encoder.spec
            and manifest.index_factory == factory)
