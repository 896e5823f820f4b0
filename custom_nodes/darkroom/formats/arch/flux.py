"""FLUX.2 and FLUX.1 (dev/schnell): ComfyUI's detection (comfy/model_detection.py:190-205) hardcodes the
heads (48 / 24) and axes_dim, so only full-width models load there. Here the heads come from the q/k-norm
width, axes_dim is derived for that head width, depth from the block count, MLP ratio, biases, guidance
and channel counts from the matching weights."""

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

# Keyword arguments comfy.ldm.flux.model.Flux / comfy.ldm.wan.model.WanModel accept (FluxParams fields
# plus image_model; WanModel.__init__ minus device/dtype/operations). tests/engine checks them.
FLUX_CONFIG_KEYS = frozenset(
    [
        "image_model",
        "in_channels",
        "out_channels",
        "vec_in_dim",
        "context_in_dim",
        "hidden_size",
        "mlp_ratio",
        "num_heads",
        "depth",
        "depth_single_blocks",
        "axes_dim",
        "theta",
        "patch_size",
        "qkv_bias",
        "guidance_embed",
        "txt_ids_dims",
        "global_modulation",
        "mlp_silu_act",
        "ops_bias",
        "default_ref_method",
        "ref_index_scale",
        "yak_mlp",
        "txt_norm",
    ]
)


def flux_axes_dim(head_dim: int, flux2: bool) -> list[int]:
    """RoPE axes for a head width: FLUX.2 four near-equal even axes; FLUX.1 keeps 16/56/56 proportions."""
    if head_dim % 2 or head_dim < (8 if flux2 else 6):
        raise ArchInferenceError(
            f"head_dim {head_dim} is too small or odd for FLUX rope; pass axes_dim in config_override"
        )
    if flux2:
        half = head_dim // 2  # work in pairs so every axis stays even
        base, extra = divmod(half, 4)
        return [2 * (base + (1 if i >= 4 - extra else 0)) for i in range(4)]
    # First axis ~ head_dim / 8 (16 of 128), congruent to head_dim mod 4 so the other two split evenly.
    first = max(2, 2 * round(head_dim / 16))
    while (head_dim - first) % 4:
        first += 2
    rest = (head_dim - first) // 2
    return [first, rest, rest]


def _flux_mlp_hidden(shapes: Mapping[str, Shape], hidden: int, silu: bool, source: str) -> int:
    if "double_blocks.0.img_mlp.0.weight" in shapes:
        out = shapes["double_blocks.0.img_mlp.0.weight"][0]
        return out // 2 if silu else out
    return required_shape(shapes, "single_blocks.0.linear2.weight", source)[1] - hidden


def _flux_head_dim(shapes: Mapping[str, Shape], source: str) -> int:
    for key in ("double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.0.norm.query_norm.scale"):
        if key in shapes:
            return shapes[key][0]
    raise ArchInferenceError(
        f"{source}: no q/k-norm scale found to infer the head width; pass num_heads and axes_dim"
    )


def infer_flux(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for FLUX.2 or FLUX.1 (dev/schnell) from un-prefixed tensor shapes."""
    if (
        "double_blocks.0.img_mlp.gate_proj.weight" in shapes
        or "distilled_guidance_layer.norms.0.scale" in shapes
    ):
        raise WrongFamilyError(
            f"{source}: a FLUX-derived variant (Ovis/Chroma) this loader does not serve; use ComfyUI's loader"
        )
    flux2 = "double_stream_modulation_img.lin.weight" in shapes
    patch = 1 if flux2 else 2
    hidden, img_in = required_shape(shapes, "img_in.weight", source)
    head_dim = _flux_head_dim(shapes, source)
    if hidden % head_dim:
        raise ArchInferenceError(
            f"{source}: hidden size {hidden} is not a multiple of the q/k-norm width {head_dim}"
        )
    depth = count_blocks(shapes, "double_blocks.")
    cfg: dict[str, Any] = {
        "image_model": "flux2" if flux2 else "flux",
        "in_channels": img_in // (patch * patch),
        "out_channels": required_shape(shapes, "final_layer.linear.weight", source)[0] // (patch * patch),
        "vec_in_dim": shapes["vector_in.in_layer.weight"][1]
        if "vector_in.in_layer.weight" in shapes
        else None,
        "context_in_dim": required_shape(shapes, "txt_in.weight", source)[1],
        "hidden_size": hidden,
        "mlp_ratio": _flux_mlp_hidden(shapes, hidden, flux2, source) / hidden,
        "num_heads": hidden // head_dim,
        "depth": depth,
        "depth_single_blocks": count_blocks(shapes, "single_blocks."),
        "axes_dim": flux_axes_dim(head_dim, flux2),
        "theta": 2000 if flux2 else 10000,
        "patch_size": patch,
        "qkv_bias": "double_blocks.0.img_attn.qkv.bias" in shapes if depth else not flux2,
        "guidance_embed": "guidance_in.in_layer.weight" in shapes,
        "txt_ids_dims": [3] if flux2 else [],
        "ops_bias": "img_in.bias" in shapes,
        "txt_norm": "txt_norm.scale" in shapes,
    }
    if flux2:
        cfg |= {
            "global_modulation": True,
            "mlp_silu_act": True,
            "default_ref_method": "index",
            "ref_index_scale": 10.0,
        }
        variant = "flux2"
    else:
        variant = "flux1-dev" if cfg["guidance_embed"] else "flux1-schnell"
    return ArchConfig(Family.FLUX, variant, cfg)


def check_flux(cfg: Mapping[str, Any], source: str) -> None:
    hidden, heads, axes = cfg["hidden_size"], cfg["num_heads"], list(cfg["axes_dim"])
    if heads <= 0 or hidden % heads:
        raise ArchInferenceError(f"{source}: hidden_size {hidden} is not divisible by num_heads {heads}")
    if sum(axes) != hidden // heads or any(a % 2 for a in axes):
        raise ArchInferenceError(
            f"{source}: axes_dim {axes} must be even numbers summing to the head width {hidden // heads}"
        )
