"""Import a prebuilt FAISS index (Search-R1 / FlashRAG layout) as an embedkit index folder, without re-encoding.

In that layout row i of the FAISS index is the vector of line i of the corpus jsonl (`{"id", "contents"}`,
wiki-18 style: the title on the first line of `contents`). The import writes a dense index folder — the
manifest (the encoder that made the vectors, so queries are encoded the same way), the document store (row i
= the i-th corpus record) and the FAISS file, symlinked (`link=True`, nothing copied) or copied — in one
atomic step. Searching the folder returns exactly the rows plain FAISS returns for the same query vectors.

    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index.prebuilt import import_faiss_index

    encoder = Encoder(EncoderConfig(model="intfloat/e5-base-v2", query_prefix="query: "))
    import_faiss_index("e5_Flat.index", "wiki-18.jsonl", encoder, "indexes/wiki18", pooling="mean", link=True)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from embedkit.data.corpus import Document, FieldMap
from embedkit.errors import DataFormatError, EmbedkitError, IndexFormatError
from embedkit.index.manifest import FAISS_NAME, MANIFEST_NAME

DOCSTORE_BATCH = 10_000


def describe_faiss(index: Any) -> tuple[str, str]:
    """(metric, factory string) of a FAISS index read from disk, for the manifest."""
    import faiss

    from embedkit.index.faiss_ops import unwrap

    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        metric = "ip"
    elif index.metric_type == faiss.METRIC_L2:
        metric = "l2"
    else:
        raise EmbedkitError(f"FAISS metric type {index.metric_type} is not supported (inner product or L2 only)")
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexFlat):
        factory = "Flat"
    elif isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        suffix = "" if isinstance(storage, faiss.IndexFlat) else f" ({type(storage).__name__} storage)"
        factory = f"HNSW{inner.hnsw.nb_neighbors(1)}{suffix}"
    elif isinstance(inner, faiss.IndexIVFPQ):
        factory = f"IVF{inner.nlist},PQ{inner.pq.M}"
    elif isinstance(inner, faiss.IndexIVFFlat):
        factory = f"IVF{inner.nlist},Flat"
    elif isinstance(inner, faiss.IndexIVFScalarQuantizer):
        factory = f"IVF{inner.nlist},SQ8"
    else:
        factory = type(inner).__name__
    return metric, factory


def with_row_ids(index: Any) -> Any:
    """An imported plain FAISS index whose labels are positions (Flat, HNSW), rebuilt once under explicit row
    ids (row i keeps id i) so documents can be added and removed; indexes that store ids are returned as is."""
    import faiss
    import numpy as np

    from embedkit.index.faiss_ops import add_vectors, create_index, stores_exact_vectors

    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return index
    try:
        faiss.extract_index_ivf(index)
        return index  # IVF lists store the ids (positions, when added without ids)
    except RuntimeError:
        pass
    if not stores_exact_vectors(index):
        raise EmbedkitError("this imported FAISS index stores lossy vectors without ids; documents cannot be added "
                            "to it in place: rebuild it with `embedkit index build`")  # fmt: skip
    metric, factory = describe_faiss(index)
    rebuilt = create_index(index.d, factory, metric)
    for start in range(0, index.ntotal, 262_144):
        stop = min(start + 262_144, index.ntotal)
        add_vectors(rebuilt, index.reconstruct_n(start, stop - start), np.arange(start, stop, dtype=np.int64))
    return rebuilt


def import_faiss_index(
    faiss_path: str | Path,
    corpus: str | Path,
    encoder: Any,
    out: str | Path,
    *,
    pooling: str | None = None,
    link: bool = True,
    overwrite: bool = False,
    fields: FieldMap | None = None,
    quiet: bool = True,
) -> Path:
    """Write an embedkit dense index at `out` from a FAISS file and its row-aligned corpus. Returns `out`.

    `encoder` (an `embedkit.encoding.Encoder`) is the model that produced the vectors; only its description
    is recorded, nothing is encoded. `pooling`, when given, must be the model's pooling (the vectors were made
    with it). The corpus must hold exactly one record per FAISS row.
    """
    import faiss

    from embedkit import __version__
    from embedkit.data import iter_documents
    from embedkit.index.docstore import DOCSTORE_NAME, DocStore
    from embedkit.index.faiss_ops import search_defaults
    from embedkit.index.manifest import DenseManifest, HistoryEntry, SearchDefaults
    from embedkit.io import atomic_directory

    faiss_path, corpus = Path(faiss_path), Path(corpus)
    if not faiss_path.is_file():
        raise EmbedkitError(f"FAISS index not found: {faiss_path}")
    try:
        # Memory-mapped: only the header is read here, however large the index.
        index = faiss.read_index(str(faiss_path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as error:
        raise IndexFormatError(f"{faiss_path} is not a FAISS index FAISS can read "
                               f"({str(error).strip().splitlines()[-1]})") from None  # fmt: skip
    spec = encoder.spec
    if pooling is not None and pooling != spec.pooling:
        raise EmbedkitError(f"--pooling {pooling}: the model '{spec.model}' pools with '{spec.pooling}'; queries "
                            "would be encoded differently from the index's vectors. Use a model folder whose "
                            "sentence-transformers pooling is the one the index was built with")  # fmt: skip
    if index.d != spec.dim:
        raise EmbedkitError(f"{faiss_path} holds {index.d}-dimensional vectors but '{spec.model}' makes "
                            f"{spec.dim}-dimensional ones: not the model this index was built with")  # fmt: skip
    rows = int(index.ntotal)
    metric, factory = describe_faiss(index)
    defaults = search_defaults(index)
    del index
    with atomic_directory(out, overwrite=overwrite, marker=MANIFEST_NAME, what="embedkit index") as folder:
        store = DocStore(folder / DOCSTORE_NAME, readonly=False)
        try:
            count = _fill_docstore(store, iter_documents(corpus, fields, check_duplicates=False), rows, corpus,
                                   quiet=quiet)  # fmt: skip
        finally:
            store.close()
        target = folder / FAISS_NAME
        if link:
            os.symlink(faiss_path.resolve(), target)
        else:
            shutil.copyfile(faiss_path, target)
        manifest = DenseManifest(
            encoder=spec, metric=metric, index_factory=factory, num_docs=count, corpus=str(corpus),
            embedkit_version=__version__, next_row=rows, search=SearchDefaults(**defaults),
            history=[HistoryEntry(action="import", documents=count, source=str(faiss_path.resolve()))],
        )  # fmt: skip
        manifest.record_files(folder)
        manifest.save(folder)
    return Path(out)


def _fill_docstore(store: Any, documents: Iterable[Document], rows: int, corpus: Path, *, quiet: bool) -> int:
    """Row i of the store is the i-th corpus record; the corpus must have exactly `rows` records."""
    from tqdm.auto import tqdm

    count = 0
    iterator = iter(documents)
    with tqdm(total=rows, unit="doc", desc="docstore", disable=quiet) as bar:
        while batch := list(islice(iterator, DOCSTORE_BATCH)):
            if count + len(batch) > rows:
                raise DataFormatError(f"the corpus has more records than the FAISS index has rows ({rows}); "
                                      f"row i of the index must be record i of the corpus", path=corpus)  # fmt: skip
            store.add(range(count, count + len(batch)), batch)
            count += len(batch)
            bar.update(len(batch))
    if count != rows:
        raise DataFormatError(f"the corpus has {count} records but the FAISS index has {rows} rows; row i of the "
                              "index must be record i of the corpus", path=corpus)  # fmt: skip
    return count
