"""SigLIP vision towers (HunyuanVideo 1.5's image encoder) as ComfyUI CLIP_VISION objects, sized from
their own weights.

ComfyUI's CLIPVisionLoader picks a config file by the presence of layer 22 / 30 / 47 and the width 1152
(comfy/clip_vision.py:100-128), so only the released sizes load through it. Here every size is read off
the weights, ComfyUI's own ClipVisionModel is built from that config (it takes a JSON file, so one is
written to a temporary file), and the keys are checked strictly.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import comfy.clip_vision
import comfy.utils
import torch

from ..formats.arch import count_blocks
from ..formats.model_files import ModelFileMismatchError, check_keys, read_shapes

log = logging.getLogger(__name__)

TITLE = "a SigLIP vision tower (vision_model.* keys, no class embedding)"
SIGLIP_HEAD_DIM = 72  # SigLIP so400m: 1152 wide, 16 heads
_REQUIRED = (
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding.weight",
    "vision_model.encoder.layers.0.mlp.fc1.weight",
    "vision_model.post_layernorm.weight",
)


def siglip_config(path: Path, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ComfyUI's siglip_vision_model config (clip_vision_siglip_384.json's fields) read off the weights."""
    missing = [key for key in _REQUIRED if key not in sd]
    if missing or "vision_model.embeddings.class_embedding" in sd:
        raise ModelFileMismatchError(
            path,
            "this is not a SigLIP vision tower",
            expected=TITLE,
            fix="Use a SigLIP file such as sigclip_vision_patch14_384.safetensors.",
            missing=missing,
        )
    hidden, channels, patch, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
    side = math.isqrt(sd["vision_model.embeddings.position_embedding.weight"].shape[0])
    return {
        "num_channels": channels,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": hidden,
        "image_size": side * patch,
        "intermediate_size": sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "model_type": "siglip_vision_model",
        "num_attention_heads": hidden // SIGLIP_HEAD_DIM if hidden % SIGLIP_HEAD_DIM == 0 else 1,
        "num_hidden_layers": count_blocks(sd, "vision_model.encoder.layers."),
        "patch_size": patch,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def inspect_clip_vision(path: Path) -> dict[str, Any] | None:
    """The config `load_clip_vision` would build, from the header alone (None: not safetensors)."""
    shapes = read_shapes(path)
    return None if shapes is None else siglip_config(path, shapes)


def load_clip_vision(path: Path) -> comfy.clip_vision.ClipVisionModel:
    """A ComfyUI ClipVisionModel for a SigLIP file of any size."""
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    config = siglip_config(path, sd)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as config_file:
        json.dump(config, config_file)
        config_file.flush()
        model = comfy.clip_vision.ClipVisionModel(config_file.name)
    missing, unexpected = model.load_sd(sd)
    fix = "The file may be damaged or a vision tower of another kind."
    check_keys(path, missing, unexpected, expected=TITLE, fix=fix)
    log.info("clip vision from %s: %s", path.name, config)
    return model
