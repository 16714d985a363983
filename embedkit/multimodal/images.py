"""Load images by file path, file:// or http(s) URL, data URI or PIL object.

When `qwen_vl_utils` imports (it needs torchvision, so GPU machines with the full Qwen stack) its
`fetch_image` is used, exactly as Qwen's own pipelines read images. Without it (CPU machines, where
torchvision cannot be installed) the same sources are read with PIL and left for the image processor to
resize, which applies the same `smart_resize` rule.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError


def _qwen_fetch_image():
    try:
        from qwen_vl_utils import fetch_image
    except ImportError:  # qwen_vl_utils imports torchvision at module level
        return None
    return fetch_image


def load_image(ref: Any, *, base_dir: str | Path | None = None, timeout: float = 30.0):
    """Return an RGB PIL image for `ref` (path relative to `base_dir`, URL, data URI or PIL image)."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, dict) and ref.get("bytes"):  # a parquet/`datasets` image cell: {"bytes", "path"}
        return Image.open(io.BytesIO(ref["bytes"])).convert("RGB")
    if isinstance(ref, dict) and ref.get("path"):
        ref = ref["path"]
    if not isinstance(ref, str) or not ref:
        raise DataFormatError(f"an image must be a path, URL or data URI, got {ref!r}", field="image")
    if not ref.startswith(("http://", "https://", "data:", "file://")) and base_dir is not None:
        candidate = Path(base_dir) / ref
        if candidate.exists():
            ref = str(candidate)
    fetch = _qwen_fetch_image()
    if fetch is not None:
        return fetch({"image": ref}).convert("RGB")
    try:
        if ref.startswith(("http://", "https://")):
            import httpx

            response = httpx.get(ref, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            return Image.open(io.BytesIO(response.content)).convert("RGB")
        if ref.startswith("data:"):
            _, _, payload = ref.partition("base64,")
            return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
        path = ref[len("file://"):] if ref.startswith("file://") else ref
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise DataFormatError(f"cannot read image {ref!r}: {error}", field="image") from error
