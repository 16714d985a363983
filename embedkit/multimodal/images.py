"""Load images by file path, file:// or http(s) URL, data URI or PIL object, resized to the pixel bounds.

Two readers, picked per machine by the environment variable `EMBEDKIT_IMAGE_READER`:

- `qwen-vl-utils` (default): Qwen's own `fetch_image`, as Qwen's pipelines read images, given the batch's
  `min_pixels` / `max_pixels`. It imports torchvision at module level, so it needs `embedkit[vl]` (GPU
  machines). Where it cannot be imported, reading an image is refused with the reason: falling back silently
  would give other pixels than the machines that have it.
- `pil`: PIL (and httpx for URLs) plus the same resize as `fetch_image` (the Qwen2-VL processor's
  `smart_resize` to the bounds, transparent pixels on white) — the reader for CPU machines, where torchvision
  cannot be installed.

The image processor then finds every image already at its target size and does not resize it again.
"""

from __future__ import annotations

import base64
import inspect
import io
import os
from pathlib import Path
from typing import Any

from embedkit.errors import DataFormatError, EmbedkitError

READER_ENV = "EMBEDKIT_IMAGE_READER"
READERS = ("qwen-vl-utils", "pil")


def image_reader() -> str:
    """The reader this process uses: `EMBEDKIT_IMAGE_READER`, else qwen-vl-utils."""
    name = os.environ.get(READER_ENV, "").strip() or "qwen-vl-utils"
    if name not in READERS:
        raise EmbedkitError(f"{READER_ENV}={name!r}: choose one of {', '.join(READERS)}")
    return name


def _qwen_fetch_image():
    try:
        from qwen_vl_utils import fetch_image
    except ImportError as error:  # qwen_vl_utils imports torchvision at module level
        raise EmbedkitError(
            f"images are read with qwen-vl-utils (Qwen's fetch_image, which applies min_pixels/max_pixels), but it "
            f"cannot be imported here ({error}). Install embedkit[vl] (qwen-vl-utils and torchvision, for GPU "
            f"machines), or set {READER_ENV}=pil to read images with PIL and the same resize rule"
        ) from None
    return fetch_image


def load_image(ref: Any, *, base_dir: str | Path | None = None, min_pixels: int | None = None,
               max_pixels: int | None = None, patch_size: int = 14, merge_size: int = 2,
               timeout: float = 30.0):  # fmt: skip
    """An RGB PIL image for `ref` (path relative to `base_dir`, URL, data URI or PIL image), resized as the
    Qwen2-VL processor would to [`min_pixels`, `max_pixels`] in whole patches of `patch_size` x `merge_size`
    (no resize without bounds)."""
    from PIL import Image

    if isinstance(ref, dict) and ref.get("bytes"):  # a parquet/`datasets` image cell: {"bytes", "path"}
        ref = Image.open(io.BytesIO(ref["bytes"]))
    elif isinstance(ref, dict) and ref.get("path"):
        ref = ref["path"]
    if not isinstance(ref, Image.Image) and (not isinstance(ref, str) or not ref):
        raise DataFormatError(f"an image must be a path, URL or data URI, got {ref!r}", field="image")
    if isinstance(ref, str) and not ref.startswith(("http://", "https://", "data:", "file://")) and base_dir is not None:
        candidate = Path(base_dir) / ref
        if candidate.exists():
            ref = str(candidate)
    if image_reader() == "qwen-vl-utils":
        return _read_with_qwen(ref, min_pixels, max_pixels, patch_size, merge_size)
    image = _to_rgb(ref if isinstance(ref, Image.Image) else _read_with_pil(ref, timeout))
    if min_pixels is None and max_pixels is None:
        return image
    return _resize(image, min_pixels, max_pixels, patch_size * merge_size)


def _read_with_qwen(ref: Any, min_pixels: int | None, max_pixels: int | None, patch_size: int, merge_size: int):
    fetch = _qwen_fetch_image()
    element: dict[str, Any] = {"image": ref}
    if min_pixels is not None:
        element["min_pixels"] = min_pixels
    if max_pixels is not None:
        element["max_pixels"] = max_pixels
    factor = patch_size * merge_size
    # qwen-vl-utils >= 0.0.12 takes the patch size (14 for Qwen2-VL, 16 for Qwen3-VL); older ones the factor.
    parameters = inspect.signature(fetch).parameters
    size = {"image_patch_size": patch_size} if "image_patch_size" in parameters else {"size_factor": factor}
    try:
        return fetch(element, **size).convert("RGB")
    except (OSError, ValueError) as error:
        raise DataFormatError(f"cannot read image {_shown(ref)}: {error}", field="image") from error


def _read_with_pil(ref: str, timeout: float):
    import httpx
    from PIL import Image

    try:
        if ref.startswith(("http://", "https://")):
            response = httpx.get(ref, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            return Image.open(io.BytesIO(response.content))
        if ref.startswith("data:"):
            _, _, payload = ref.partition("base64,")
            return Image.open(io.BytesIO(base64.b64decode(payload)))
        path = ref[len("file://"):] if ref.startswith("file://") else ref
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, httpx.HTTPError) as error:
        raise DataFormatError(f"cannot read image {_shown(ref)}: {error}", field="image") from error


def _to_rgb(image):
    """RGB as qwen-vl-utils makes it: transparent pixels become white (a plain convert would keep the colour
    stored under them)."""
    from PIL import Image

    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        return white
    return image.convert("RGB")


def _resize(image, min_pixels: int | None, max_pixels: int | None, factor: int):
    """The Qwen2-VL processor's `smart_resize` to the bounds, with PIL's resize as `fetch_image` does it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    bounds = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
    width, height = image.size
    try:
        new_height, new_width = smart_resize(height, width, factor=factor, **bounds)
    except ValueError as error:  # an aspect ratio over 200
        raise DataFormatError(f"cannot resize a {width}x{height} image: {error}", field="image") from error
    return image.resize((new_width, new_height))


def _shown(ref: Any) -> str:
    return f"{ref[:80]!r}" if isinstance(ref, str) else type(ref).__name__
