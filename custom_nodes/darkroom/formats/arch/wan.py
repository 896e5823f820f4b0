"""Wan 2.1-layout models (2.1 T2V/I2V, the 2.2 A14B experts, 2.2 S2V) and Wan 2.2 TI2V-5B: ComfyUI's
detection sets `dim // 128` heads (model_detection.py:450-495); here any even head width loads. S2V
(comfy.ldm.wan.model.WanModel_S2V): ComfyUI's detection keeps its class defaults; here the audio width is
read from the weights too (its audio-injection layers stay the class's, as in ComfyUI)."""

from __future__ import annotations

import math
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

WAN_CONFIG_KEYS = frozenset(
    [
        "image_model",
        "model_type",
        "patch_size",
        "text_len",
        "in_dim",
        "dim",
        "ffn_dim",
        "freq_dim",
        "text_dim",
        "out_dim",
        "num_heads",
        "num_layers",
        "window_size",
        "qk_norm",
        "cross_attn_norm",
        "eps",
        "flf_pos_embed_token_number",
        "in_dim_ref_conv",
        "audio_dim",  # Wan S2V: the audio encoder's width (wav2vec2-large: 1024)
    ]
)


WAN_HEAD_DIM = 128  # every released Wan (1.3B, 5B, 14B) uses 128-wide heads


def wan_num_heads(dim: int) -> int:
    """Wan heads: its q/k norms span the whole width, so no tensor holds the head count. Released models
    use 128-wide heads (dim // 128); other widths get the fewest heads whose even width is <= 128."""
    for heads in range(max(1, math.ceil(dim / WAN_HEAD_DIM)), dim + 1):
        if dim % heads == 0 and (dim // heads) % 2 == 0:
            return heads
    raise ArchInferenceError(f"Wan width {dim} has no even head width; pass num_heads in config_override")


_WAN_UNSUPPORTED = {
    "vace_patch_embedding.weight": "Wan VACE",
    "control_adapter.conv.weight": "Wan camera control",
    "audio_proj.audio_proj_glob_1.layer.bias": "Wan HuMo",
    "face_adapter.fuser_blocks.0.k_norm.weight": "Wan Animate",
}


_S2V_AUDIO_IN = "casual_audio_encoder.encoder.conv1_local.conv.weight"


def infer_wan(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for Wan 2.1-layout models (2.1 T2V/I2V, 2.2 A14B experts) and Wan 2.2 TI2V-5B."""
    for key, name in _WAN_UNSUPPORTED.items():
        if key in shapes:
            raise WrongFamilyError(
                f"{source}: a {name} model, which this loader does not serve; use ComfyUI's loader"
            )
    embed = required_shape(shapes, "patch_embedding.weight", source)
    patch = tuple(embed[2:])
    dim = required_shape(shapes, "head.modulation", source)[-1]
    cfg: dict[str, Any] = {
        "image_model": "wan2.1",
        "model_type": "i2v" if "img_emb.proj.0.bias" in shapes else "t2v",
        "patch_size": patch,
        "in_dim": embed[1],
        "dim": dim,
        "ffn_dim": required_shape(shapes, "blocks.0.ffn.0.weight", source)[0],
        "freq_dim": required_shape(shapes, "time_embedding.0.weight", source)[1],
        "text_dim": required_shape(shapes, "text_embedding.0.weight", source)[1],
        "out_dim": required_shape(shapes, "head.head.weight", source)[0] // math.prod(patch),
        "num_heads": wan_num_heads(dim),
        "num_layers": count_blocks(shapes, "blocks."),
        "window_size": (-1, -1),
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in shapes,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "eps": 1e-6,
    }
    if _S2V_AUDIO_IN in shapes:  # the causal audio encoder's first conv reads the audio features
        cfg["model_type"] = "s2v"
        cfg["audio_dim"] = shapes[_S2V_AUDIO_IN][1]
    if "img_emb.emb_pos" in shapes:
        cfg["flf_pos_embed_token_number"] = shapes["img_emb.emb_pos"][1]
    if "ref_conv.weight" in shapes:
        cfg["in_dim_ref_conv"] = shapes["ref_conv.weight"][1]
    if cfg["model_type"] == "s2v":
        variant = "wan22-s2v"
    elif cfg["out_dim"] == 48:
        variant = "wan22-ti2v-5b"
    elif cfg["model_type"] == "i2v":
        variant = "wan21-i2v"
    else:
        variant = "wan21-t2v"  # also each Wan 2.2 A14B expert (T2V in_dim 16, I2V in_dim 36)
    return ArchConfig(Family.WAN, variant, cfg)


def check_wan(cfg: Mapping[str, Any], source: str) -> None:
    dim, heads = cfg["dim"], cfg["num_heads"]
    if heads <= 0 or dim % heads or (dim // heads) % 2:
        raise ArchInferenceError(
            f"{source}: Wan dim {dim} must split into num_heads {heads} even-width heads"
        )
