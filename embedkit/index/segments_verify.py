"""`embedkit index verify` for a segmented dense folder (layout: `embedkit.index.segments`): every byte against
its checksum, then every segment's counts, rows and FAISS ids, then ids unique across the live documents.

    from embedkit.index.segments_verify import verify_segmented
    print(verify_segmented(Path("indexes/mine"), DenseManifest.load("indexes/mine")).summary())
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import IndexFormatError
from embedkit.index.faiss_ops import faiss_row_ids
from embedkit.index.kinds import VerifyReport
from embedkit.index.manifest import DenseManifest
from embedkit.index.segments import SegmentReader, retrain_due


def verify_segmented(path: Path, manifest: DenseManifest) -> VerifyReport:
    """Full check of a segmented folder; raises IndexFormatError naming the damaged file."""
    unchecked = manifest.verify_checksums(path)
    seen: set[str] = set()
    masked_total = 0
    for record in manifest.segments:
        segment = SegmentReader(path, manifest, record)
        try:
            store = segment.docstore  # checks the stored row count
            store.check_contents(record.row_stop)
            stored = np.fromiter(sorted(store.ids_by_row()), dtype=np.int64)
            where = f"index {path} is damaged: segment {record.id}"
            if len(stored) and stored[0] < record.row_start:
                raise IndexFormatError(f"{where}: {path / record.docstore} holds row {stored[0]}, below the "
                                       f"segment's rows {record.row_start}..{record.row_stop - 1}; rebuild the index")
            deleted = segment.deleted
            live = stored[~np.isin(stored, deleted)]
            if len(live) != record.num_docs:
                raise IndexFormatError(f"{where} has {len(live)} live documents, the manifest records "
                                       f"{record.num_docs}; rebuild the index")
            expected = np.union1d(stored, deleted)
            found = np.sort(faiss_row_ids(segment.faiss_index))  # reading it checks ntotal, dim and metric
            if not np.array_equal(found, expected):
                raise IndexFormatError(f"{where}: its FAISS ids and its document rows disagree; rebuild the index")
            if record.vectors is not None:
                segment.vectors(live[:1])  # checks the stored vectors' size
            ids = store.ids_by_row()
            for row in live.tolist():
                doc_id = ids[row]
                if doc_id in seen:
                    raise IndexFormatError(f"index {path} is damaged: document id {doc_id!r} is live in two "
                                           "segments; rebuild the index")
                seen.add(doc_id)
            masked_total += len(deleted)
        finally:
            segment.close()
    report = VerifyReport(path=path, kind=manifest.kind, num_docs=manifest.num_docs, files=len(manifest.files),
                          unchecked=[name for name in unchecked if name not in manifest.external_links()])
    report.notes.append(f"FAISS {manifest.index_factory}: {len(manifest.segments)} segments, {manifest.num_docs} "
                        f"documents ({masked_total} deleted rows masked)")
    if retrain_due(manifest) and manifest.trained_index is not None:
        report.notes.append("retraining is due (the index more than doubled since it was trained): "
                            "`embedkit index compact`")
    return report
