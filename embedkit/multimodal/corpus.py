"""Multimodal corpora for indexing: jsonl rows with an id and text and/or an image (path or URL).

    {"id": "img-1", "image": "photos/cat.jpg", "text": "optional caption"}
    {"_id": "doc-2", "title": "Cats", "text": "Cats are small felines."}

`build_multimodal_index` embeds them with a `MultimodalEmbedder` and writes a regular embedkit index
(`embedkit.index.write_dense_index`): the image reference is kept as the document's title so hits show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embedkit.data import Document, iter_json_lines
from embedkit.errors import DataFormatError
from embedkit.multimodal.sequence import MultimodalInput, clean_text

ID_FIELDS = ("id", "_id", "docid")
IMAGE_FIELDS = ("image", "image_path", "img_path", "url")


def read_multimodal_corpus(path: str | Path) -> list[tuple[Document, MultimodalInput]]:
    """Rows of a jsonl corpus as (document for the docstore, input for the embedder)."""
    path = Path(path)
    rows = []
    for number, record in iter_json_lines(path):
        doc_id = next((record[f] for f in ID_FIELDS if record.get(f) not in (None, "")), None)
        if doc_id is None:
            raise DataFormatError("no document id", path=path, line=number, field="id", fields_found=record.keys())
        image = next((record[f] for f in IMAGE_FIELDS if record.get(f)), None)
        text = clean_text(record.get("text") or record.get("caption"))
        title = record.get("title") or ""
        if text is None and image is None and not title:
            raise DataFormatError("a row needs text or an image", path=path, line=number, fields_found=record.keys())
        body = " ".join(part for part in (title, text or "") if part) or None
        rows.append((Document(id=str(doc_id), text=text or "", title=title or (str(image) if image else "")),
                     MultimodalInput(text=body, image=image)))
    if not rows:
        raise DataFormatError("no documents", path=path)
    return rows


def build_multimodal_index(embedder, rows: Sequence[tuple[Document, MultimodalInput]], out: str | Path, *,
                           factory: str = "Flat", overwrite: bool = False, corpus: str | None = None) -> Path:
    """Embed the rows' inputs as documents and write an embedkit index folder."""
    from embedkit.index import write_dense_index

    vectors = embedder.encode_documents([item for _, item in rows])
    return write_dense_index(out, vectors, [doc for doc, _ in rows], embedder.spec(), factory=factory,
                             overwrite=overwrite, corpus=corpus)
