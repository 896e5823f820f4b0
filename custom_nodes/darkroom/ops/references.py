"""Reference images of an edit model (FLUX.2 edit, FLUX.1 Kontext): each image read from the worker's
input folder, scaled to a pixel budget, encoded by the VAE and appended to the conditioning's
``reference_latents`` in order, as chained ReferenceLatent nodes would (comfy_extras/nodes_edit_model.py).
"""

from __future__ import annotations

import math
from typing import Any

import comfy.utils
import folder_paths
import node_helpers
import numpy as np
import torch
from PIL import Image, ImageOps

SIDE_MULTIPLE = 16  # FLUX's latent is 1/8 of the image, packed 2x2: sides in steps of 16


class ReferenceImageError(ValueError):
    """A reference image that cannot be read (the facade checked it; a worker-side file went away)."""


def scaled_size(width: int, height: int, total_pixels: int) -> tuple[int, int]:
    """The size with about ``total_pixels`` pixels and the image's aspect ratio, sides multiples of 16."""
    factor = math.sqrt(total_pixels / (width * height))
    return tuple(  # type: ignore[return-value]
        max(SIDE_MULTIPLE, round(side * factor / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (width, height)
    )


def load_image(name: str) -> torch.Tensor:
    """An input-folder image as ComfyUI's IMAGE: [1, H, W, 3] floats in 0..1, EXIF orientation applied."""
    try:
        path = folder_paths.get_annotated_filepath(name)
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError) as e:
        raise ReferenceImageError(f"reference image {name!r} cannot be read: {e}") from e
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def add_references(conditioning: Any, vae: Any, names: list[str], total_pixels: int) -> Any:
    """The conditioning with each named image's latent appended to reference_latents, in order."""
    for name in names:
        image = load_image(name)
        width, height = scaled_size(image.shape[2], image.shape[1], total_pixels)
        scaled = comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "area", "disabled").movedim(
            1, -1
        )
        latent = vae.encode(scaled[:, :, :, :3])
        conditioning = node_helpers.conditioning_set_values(
            conditioning, {"reference_latents": [latent]}, append=True
        )
    return conditioning
