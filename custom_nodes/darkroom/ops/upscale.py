"""Upscaling with an ESRGAN-family model (a spandrel ImageModelDescriptor, as ComfyUI's
UpscaleModelLoader gives it) in tiles, to an exact scale factor.

Memory: the model runs on one tile at a time (``tile`` px a side, 512 by default, overlapping by 32),
so its activations are bounded by the tile, not the image: ComfyUI budgets tile² x 3 x 4 B x model
scale x 384 per tile (ImageUpscaleWithModel's estimate: about 4.8 GB for 512 px at x4, 1.2 GB at
256 px) plus the weights (67 MB for RealESRGAN_x4plus). The whole output is assembled on the CPU in
float32: output pixels x 12 B, at most 768 MB under MAX_OUTPUT_PIXELS.
"""

from __future__ import annotations

from typing import Any

import comfy.model_management as mm
import comfy.utils
import torch

DEFAULT_TILE = 512
OVERLAP = 32
MIN_TILE = 64  # below this the 32 px overlap is most of the tile
MAX_OUTPUT_PIXELS = 64 * 1024 * 1024


class UpscaleError(ValueError):
    """A request the upscaler refuses (an output past the memory bound)."""


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The output's sides: the input's times ``scale``, rounded, at least 1."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def upscale(model: Any, image: torch.Tensor, scale: float, tile: int) -> torch.Tensor:
    """``image`` ([B, H, W, C] in 0..1) upscaled by ``model`` tile by tile, then resized to exactly
    ``scale`` times its size (lanczos); ``tile`` 0 = DEFAULT_TILE."""
    width, height = output_size(image.shape[2], image.shape[1], scale)
    if width * height > MAX_OUTPUT_PIXELS:
        raise UpscaleError(
            f"the output would be {width} x {height} = {width * height} pixels; at most {MAX_OUTPUT_PIXELS} "
            "(a smaller scale or image)"
        )
    tile = max(MIN_TILE, tile or DEFAULT_TILE)
    device = mm.get_torch_device()
    model.to(device)
    try:
        pixels = image.movedim(-1, -3).to(device)
        upscaled = comfy.utils.tiled_scale(
            pixels,
            lambda part: model(part),
            tile_x=tile,
            tile_y=tile,
            overlap=OVERLAP,
            upscale_amount=model.scale,
            output_device="cpu",
        )
    finally:
        model.to(mm.unet_offload_device())
    upscaled = torch.clamp(upscaled, 0.0, 1.0)
    if (upscaled.shape[3], upscaled.shape[2]) != (width, height):
        upscaled = comfy.utils.common_upscale(upscaled, width, height, "lanczos", "disabled").clamp(0.0, 1.0)
    return upscaled.movedim(-3, -1)
