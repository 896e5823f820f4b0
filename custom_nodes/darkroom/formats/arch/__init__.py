"""Architecture configs inferred from a diffusion model's tensor names and shapes (no ComfyUI import).

ComfyUI's detection pins widths (FLUX heads and axes, Wan's heads, Z-Image at 3840, Qwen-Image's full
widths), so only full-width models load through it. Here every number comes from the shapes, one module
per family (flux, wan, zimage, sd3, qwen_image) on what they share (base); this package dispatches by
family, applies a node's config_override and says which weights an fp8 file quantises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .base import (
    ArchConfig,
    ArchInferenceError,
    Family,
    ModelFileError,
    Shape,
    WrongFamilyError,
    count_blocks,
    find_prefix,
)
from .flux import FLUX_CONFIG_KEYS, check_flux, flux_axes_dim, infer_flux
from .qwen_image import QWEN_IMAGE_CONFIG_KEYS, check_qwen_image, infer_qwen_image
from .sd3 import SD3_CONFIG_KEYS, check_sd3, infer_sd3
from .wan import WAN_CONFIG_KEYS, check_wan, infer_wan, wan_num_heads
from .zimage import ZIMAGE_CONFIG_KEYS, check_zimage, infer_zimage, zimage_axes_dims

__all__ = [
    "FLUX_CONFIG_KEYS", "QWEN_IMAGE_CONFIG_KEYS", "SD3_CONFIG_KEYS", "WAN_CONFIG_KEYS", "ZIMAGE_CONFIG_KEYS",
    "ArchConfig", "ArchInferenceError", "Family", "ModelFileError", "Shape", "WrongFamilyError",
    "apply_override", "count_blocks", "find_prefix", "flux_axes_dim", "infer", "infer_flux",
    "infer_qwen_image", "infer_sd3", "infer_wan", "infer_zimage", "is_linear_weight", "parse_override",
    "quantisable", "wan_num_heads", "zimage_axes_dims",
]  # fmt: skip

_TUPLE_KEYS = frozenset({"patch_size", "window_size", "axes_dims_rope"})


def parse_override(text: str | None) -> dict[str, Any]:
    """Parse a config_override string (empty = none); ArchInferenceError if it is not a JSON object."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchInferenceError(
            f'config_override is not valid JSON ({e}); write an object like {{"num_heads": 24}}'
        ) from e
    if not isinstance(value, dict):
        raise ArchInferenceError(f"config_override must be a JSON object, got {type(value).__name__}")
    return value


def apply_override(config: ArchConfig, override: Mapping[str, Any], source: str) -> ArchConfig:
    """Merge an override over an inferred config; unknown keys and inconsistent heads/axes are rejected."""
    allowed = _CONFIG_KEYS[config.family]
    unknown = sorted(set(override) - allowed)
    if unknown:
        raise ArchInferenceError(
            f"{source}: config_override has unknown keys {unknown}; "
            f"valid keys for {config.family.value}: {sorted(allowed)}"
        )
    merged = dict(config.unet_config)
    for key, value in override.items():
        merged[key] = tuple(value) if key in _TUPLE_KEYS and isinstance(value, list) else value
    _CHECKS[config.family](merged, source)
    return ArchConfig(config.family, config.variant, merged)


def infer(
    family: Family, shapes: Mapping[str, Shape], source: str, override: Mapping[str, Any] | None = None
) -> ArchConfig:
    """Infer the config of un-prefixed `shapes` for `family`, then apply `override`."""
    config = _INFER[family](shapes, source)
    return apply_override(config, override or {}, source)


_CONFIG_KEYS = {
    Family.FLUX: FLUX_CONFIG_KEYS, Family.WAN: WAN_CONFIG_KEYS, Family.ZIMAGE: ZIMAGE_CONFIG_KEYS,
    Family.SD3: SD3_CONFIG_KEYS, Family.QWEN_IMAGE: QWEN_IMAGE_CONFIG_KEYS,
}  # fmt: skip
_CHECKS = {
    Family.FLUX: check_flux, Family.WAN: check_wan, Family.ZIMAGE: check_zimage, Family.SD3: check_sd3,
    Family.QWEN_IMAGE: check_qwen_image,
}  # fmt: skip
_INFER = {
    Family.FLUX: infer_flux, Family.WAN: infer_wan, Family.ZIMAGE: infer_zimage, Family.SD3: infer_sd3,
    Family.QWEN_IMAGE: infer_qwen_image,
}  # fmt: skip
_BLOCK_PREFIXES: dict[Family, tuple[str, ...]] = {
    Family.FLUX: ("double_blocks.", "single_blocks."),
    Family.WAN: ("blocks.",),
    Family.ZIMAGE: ("layers.", "noise_refiner.", "context_refiner."),
    Family.SD3: ("joint_blocks.",),
    Family.QWEN_IMAGE: ("transformer_blocks.",),
}


def is_linear_weight(key: str, shape: Shape) -> bool:
    """True for the 2-D weight of a linear layer (in FLUX, Wan, Z-Image, SD3 and Qwen-Image every 2-D
    `.weight` is)."""
    return len(shape) == 2 and key.endswith(".weight")


def quantisable(family: Family, key: str, shape: Shape) -> bool:
    """Weights an fp8 file stores quantised: linear weights inside the transformer blocks. Norms, biases,
    modulation, embeddings and the in/out projections stay as stored, like ComfyUI's own fp8 files."""
    return is_linear_weight(key, shape) and key.startswith(_BLOCK_PREFIXES[family])
