"""Encode decoded images to files; imports no ComfyUI, so it is testable on its own."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(pixels: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode one HxWx3 float image in [0, 1] as png, jpeg or webp, with no metadata (deterministic)."""
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; use one of {sorted(FORMATS)}")
    image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=4)
    elif fmt == "jpeg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="WEBP", quality=quality)
    return out.getvalue()
