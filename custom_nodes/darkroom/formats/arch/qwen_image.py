"""Qwen-Image and Qwen-Image-Edit (2509, 2511; Layered recognised): ComfyUI's detection
(model_detection.py:617) leaves the widths at the full model's; here heads come from the q-norm width
and the rope axes are derived for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import ArchConfig, ArchInferenceError, Family, Shape, count_blocks, required_shape
from .flux import flux_axes_dim

# comfy.ldm.qwen_image.model.QwenImageTransformer2DModel's keyword arguments (minus device/dtype/operations).
QWEN_IMAGE_CONFIG_KEYS = frozenset(
    [
        "image_model",
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "pooled_projection_dim",
        "axes_dims_rope",
        "default_ref_method",
        "use_additional_t_cond",
    ]
)


QWEN_IMAGE_PATCH = 2  # every Qwen-Image release packs 2x2 latent patches (in_channels 64 = 16 x 4)


def infer_qwen_image(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for Qwen-Image and Qwen-Image-Edit (2509; 2511 marks itself with an __index_timestep_zero__
    tensor, Layered with an additional timestep embedding), as comfy/model_detection.py:617 reads them,
    plus the widths it leaves at the full model's: heads from the q-norm width, rope axes for that width."""
    inner, in_channels = required_shape(shapes, "img_in.weight", source)
    head_dim = required_shape(shapes, "transformer_blocks.0.attn.norm_q.weight", source)[0]
    if inner % head_dim:
        raise ArchInferenceError(f"{source}: width {inner} is not a multiple of the q-norm width {head_dim}")
    out = required_shape(shapes, "proj_out.weight", source)[0]
    cfg: dict[str, Any] = {
        "image_model": "qwen_image",
        "patch_size": QWEN_IMAGE_PATCH,
        "in_channels": in_channels,
        "out_channels": out // QWEN_IMAGE_PATCH**2,
        "num_layers": count_blocks(shapes, "transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": required_shape(shapes, "txt_in.weight", source)[1],
        "axes_dims_rope": tuple(flux_axes_dim(head_dim, flux2=False)),  # 128 -> (16, 56, 56), as released
        "default_ref_method": "index",
    }
    variant = "qwen-image"
    if "__index_timestep_zero__" in shapes:
        cfg["default_ref_method"], variant = "index_timestep_zero", "qwen-image-edit-2511"
    if "time_text_embed.addition_t_embedding.weight" in shapes:
        cfg |= {"use_additional_t_cond": True, "default_ref_method": "negative_index"}
        variant = "qwen-image-layered"
    return ArchConfig(Family.QWEN_IMAGE, variant, cfg)


def check_qwen_image(cfg: Mapping[str, Any], source: str) -> None:
    head, axes = cfg["attention_head_dim"], list(cfg["axes_dims_rope"])
    if sum(axes) != head or any(a % 2 for a in axes):
        raise ArchInferenceError(
            f"{source}: axes_dims_rope {axes} must be even numbers summing to attention_head_dim {head}"
        )
