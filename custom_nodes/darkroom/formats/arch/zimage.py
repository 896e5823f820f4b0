"""Z-Image (Lumina 2's NextDiT with Z-Image's modulation): ComfyUI's detection knows it only at 3840
wide (model_detection.py:434-444); here heads, GQA, depth and the FFN width come from the tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import (
    ArchConfig,
    ArchInferenceError,
    Family,
    Shape,
    WrongFamilyError,
    count_blocks,
    required_shape,
)

# comfy.ldm.lumina.model.NextDiT's keyword arguments (minus device/dtype/operations).
ZIMAGE_CONFIG_KEYS = frozenset(
    [
        "image_model",
        "norm_eps",
        "clip_text_dim",
        "patch_size",
        "in_channels",
        "dim",
        "n_layers",
        "n_refiner_layers",
        "n_heads",
        "n_kv_heads",
        "multiple_of",
        "ffn_dim_multiplier",
        "qk_norm",
        "cap_feat_dim",
        "axes_dims",
        "axes_lens",
        "rope_theta",
        "z_image_modulation",
        "time_scale",
        "pad_tokens_multiple",
    ]
)


# Z-Image's FeedForward width: int(8/3 * dim) rounded up to a multiple of 256 (model_detection.py:437).
ZIMAGE_FFN_MULTIPLIER = 8.0 / 3.0
ZIMAGE_FFN_MULTIPLE = 256


def zimage_axes_dims(head_dim: int) -> list[int]:
    """RoPE axes for a head width in Z-Image's proportions (32/48/48 of 128): the first about a quarter,
    the other two equal, all even."""
    if head_dim % 2 or head_dim < 6:
        raise ArchInferenceError(
            f"head_dim {head_dim} is too small or odd for Z-Image rope; pass axes_dims in config_override"
        )
    first = max(2, 2 * round(head_dim / 8))
    while (head_dim - first) % 4:
        first += 2
    rest = (head_dim - first) // 2
    return [first, rest, rest]


def _zimage_ffn(dim: int, hidden: int) -> tuple[float, int]:
    """(ffn_dim_multiplier, multiple_of) giving FeedForward width `hidden`: Z-Image's own rule when it
    fits (as ComfyUI's detection sets it), else the exact width (multiple_of = hidden rounds up to it)."""
    multiple = ZIMAGE_FFN_MULTIPLE
    if -(-int(ZIMAGE_FFN_MULTIPLIER * dim) // multiple) * multiple == hidden:
        return ZIMAGE_FFN_MULTIPLIER, multiple
    return hidden / dim, hidden


def infer_zimage(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for Z-Image (Lumina 2's NextDiT with Z-Image's modulation) at any width and depth. ComfyUI's
    detection knows it only at 3840 wide (30 heads); here heads come from the q-norm width, GQA from the
    fused qkv, depth from the block counts, the FFN width from its weight. Patches are 2x2 as released."""
    if "layers.0.adaLN_modulation.1.weight" in shapes:
        raise WrongFamilyError(f"{source}: a Lumina 2 model, which this loader does not serve; use ComfyUI's")
    dim, cap_feat_dim = required_shape(shapes, "cap_embedder.1.weight", source)
    head_dim = required_shape(shapes, "layers.0.attention.q_norm.weight", source)[0]
    n_heads = required_shape(shapes, "layers.0.attention.out.weight", source)[1] // head_dim
    qkv_heads = required_shape(shapes, "layers.0.attention.qkv.weight", source)[0] // head_dim
    ffn_multiplier, multiple_of = _zimage_ffn(
        dim, required_shape(shapes, "layers.0.feed_forward.w1.weight", source)[0]
    )
    patch = 2
    cfg: dict[str, Any] = {
        "image_model": "lumina2",
        "patch_size": patch,
        "in_channels": required_shape(shapes, "x_embedder.weight", source)[1] // (patch * patch),
        "dim": dim,
        "n_layers": count_blocks(shapes, "layers."),
        "n_refiner_layers": count_blocks(shapes, "noise_refiner."),
        "n_heads": n_heads,
        "n_kv_heads": (qkv_heads - n_heads) // 2,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": ffn_multiplier,
        "qk_norm": True,
        "cap_feat_dim": cap_feat_dim,
        "axes_dims": zimage_axes_dims(head_dim),
        "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0,
        "z_image_modulation": True,
        "time_scale": 1000.0,
    }
    if "cap_pad_token" in shapes:
        cfg["pad_tokens_multiple"] = 32
    return ArchConfig(Family.ZIMAGE, "zimage", cfg)


def check_zimage(cfg: Mapping[str, Any], source: str) -> None:
    dim, heads, kv_heads, axes = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"], list(cfg["axes_dims"])
    if heads <= 0 or kv_heads <= 0 or dim % heads or heads % kv_heads:
        raise ArchInferenceError(
            f"{source}: Z-Image dim {dim} must split into n_heads {heads}, "
            f"a multiple of n_kv_heads {kv_heads}"
        )
    if sum(axes) != dim // heads or any(a % 2 for a in axes):
        raise ArchInferenceError(
            f"{source}: axes_dims {axes} must be even numbers summing to the head width {dim // heads}"
        )
