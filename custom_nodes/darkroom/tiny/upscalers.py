"""Tiny ESRGAN upscalers in Real-ESRGAN's own key layout (BasicSR's RRDBNet, as RealESRGAN_x4plus.pth
and RealESRGAN_x2plus.pth hold it: conv_first, body.N.rdbK.convM, conv_body, conv_up1/2, conv_hr,
conv_last), at tiny widths. ComfyUI loads upscalers through spandrel, which reads the architecture,
widths and scale off these shapes (x2plus: 12 input channels, the image pixel-unshuffled by 2)."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from .noise import normal

log = logging.getLogger(__name__)
FEATURES, BLOCKS = 8, 1  # RealESRGAN_x4plus: 64 and 23
GROWTH = 32  # as RealESRGAN_x4plus: spandrel assumes it (it does not read it off the shapes)


def rrdb_net(in_channels: int, salt: str) -> dict[str, torch.Tensor]:
    """An RRDBNet state dict: `in_channels` 3 for x4, 12 for x2 (BasicSR's pixel-unshuffle)."""
    shapes: dict[str, tuple[int, ...]] = {"conv_first": (FEATURES, in_channels, 3, 3)}
    for block in range(BLOCKS):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = FEATURES if conv == 5 else GROWTH
                shapes[f"body.{block}.rdb{rdb}.conv{conv}"] = (out, FEATURES + (conv - 1) * GROWTH, 3, 3)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (FEATURES, FEATURES, 3, 3)
    shapes["conv_last"] = (3, FEATURES, 3, 3)
    weights = {}
    for name, shape in shapes.items():
        seed = zlib.crc32(f"{salt}/{name}".encode())
        weights[f"{name}.weight"] = normal(seed, shape) / math.sqrt(math.prod(shape[1:]))
        weights[f"{name}.bias"] = normal(seed + 1, shape[:1]) * 0.02
    return weights


FILES: Mapping[str, tuple[int, str]] = {
    "upscale_models/tiny/esrgan-x4.safetensors": (3, "esrgan-x4"),
}


def build(models_dir: Path) -> list[Path]:
    """Write the tiny upscalers under `models_dir` (same bytes on every run)."""
    written = []
    for relative, (in_channels, salt) in FILES.items():
        path = models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(rrdb_net(in_channels, salt), str(path))
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
        written.append(path)
    return written
