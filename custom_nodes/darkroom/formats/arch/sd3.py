"""SD3 / SD 3.5: the MMDiT (comfy/ldm/modules/diffusionmodules/mmdit.py:808) fixes its own width, 64 x
depth with one 64-wide head per block, so any depth loads; the config is read as ComfyUI's detection
reads it (model_detection.py:40-79), with the file's block count checked against its width."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .base import ArchConfig, ArchInferenceError, Family, Shape, count_blocks, required_shape

# The keyword arguments of ComfyUI's MMDiT (mmdit.py) that its detection sets (model_detection.py:40).
SD3_CONFIG_KEYS = frozenset(
    [
        "in_channels",
        "patch_size",
        "out_channels",
        "depth",
        "input_size",
        "adm_in_channels",
        "context_embedder_config",
        "num_patches",
        "pos_embed_max_size",
        "qk_norm",
        "pos_embed_scaling_factor",
        "context_processor_layers",
        "x_block_self_attn_layers",
    ]
)
SD3_HEAD_DIM = 64  # MMDiT: hidden = 64 x depth, heads = depth


def infer_sd3(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for SD3 / SD 3.5 large (MMDiT) and SD 3.5 medium (MMDiT-X: some blocks attend twice)."""
    hidden, in_channels, patch = required_shape(shapes, "x_embedder.proj.weight", source)[:3]
    depth = count_blocks(shapes, "joint_blocks.")
    if hidden != SD3_HEAD_DIM * depth:
        raise ArchInferenceError(
            f"{source}: an MMDiT's width is 64 x its depth (ComfyUI's MMDiT fixes it), but this file is "
            f"{hidden} wide with {depth} joint blocks; the file is damaged or not an SD3 model"
        )
    cfg: dict[str, Any] = {
        "in_channels": in_channels,
        "patch_size": patch,
        "out_channels": required_shape(shapes, "final_layer.linear.weight", source)[0] // (patch * patch),
        "depth": depth,
        "input_size": None,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": sorted(
            int(k.split(".")[1]) for k in shapes if k.endswith(".x_block.attn2.qkv.weight")
        ),
    }
    if "y_embedder.mlp.0.weight" in shapes:
        cfg["adm_in_channels"] = shapes["y_embedder.mlp.0.weight"][1]
    if "context_embedder.weight" in shapes:
        out_features, in_features = shapes["context_embedder.weight"]
        params = {"in_features": in_features, "out_features": out_features}
        cfg["context_embedder_config"] = {"target": "torch.nn.Linear", "params": params}
    if "pos_embed" in shapes:
        cfg["num_patches"] = shapes["pos_embed"][1]
        cfg["pos_embed_max_size"] = round(math.sqrt(shapes["pos_embed"][1]))
    if "joint_blocks.0.context_block.attn.ln_q.weight" in shapes:
        cfg["qk_norm"] = "rms"
    if "context_processor.layers.0.attn.qkv.weight" in shapes:
        cfg["context_processor_layers"] = count_blocks(shapes, "context_processor.layers.")
    variant = "sd35-medium" if cfg["x_block_self_attn_layers"] else "sd3"
    return ArchConfig(Family.SD3, variant, cfg)


def check_sd3(cfg: Mapping[str, Any], source: str) -> None:
    if not isinstance(cfg["depth"], int) or cfg["depth"] <= 0:
        raise ArchInferenceError(f"{source}: SD3 depth must be a positive integer, got {cfg['depth']!r}")
