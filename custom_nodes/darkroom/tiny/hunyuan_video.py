"""Tiny HunyuanVideo 1.5 models: ComfyUI's own classes at test widths, for the demo twins of
fal-ai/hunyuan-video-v1.5.

- The diffusion model (comfy.ldm.hunyuan_video.model.HunyuanVideo with 1.5's parts: cond-type embedding,
  ByT5 mapper, SigLIP projection) at width 128: ComfyUI's own detection (model_detection.py:137-186)
  reads every size off the weights but the heads (width // 128), so one 128-wide head loads through
  its stock UNETLoader. Fixed by the class: the ByT5 mapper's 1472 -> 2048 -> 2048 widths, and the
  vision input 1152 (HunyuanVideo15's config matches on it). Its text context is 32 wide: the tiny
  Qwen2.5-VL (Qwen-Image's layout at 4 layers: 1.5 reads the third-to-last hidden state) is the first
  text encoder.
- ByT5-small (the glyph encoder, comfy.text_encoders.t5.T5) at one block: d_model stays 1472, the width
  the diffusion model's mapper takes.
- The 32-channel causal VAE (comfy.ldm.hunyuan_video.vae_refiner, 16x spatial, 4x temporal) 8 to 64 wide.
- A rank-4 LoRA on the diffusion model's double-block linears.
- SigLIP (comfy.clip_model.CLIPVisionModelProjection, siglip_vision_model) at two layers (ComfyUI reads the
  penultimate hidden state), 1152 wide
  (the diffusion model's vision input) on 56 px images (16 patches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import comfy.clip_model
import comfy.ldm.hunyuan_video.model
import comfy.ops
import comfy.text_encoders.t5
import torch

from ..formats.arch import Shape, is_linear_weight
from ..ops.vae import hunyuan_video_15_vae
from .diffusion import lora_state_dict
from .encoders import StateDict, _config, _weights, qwen25_vl_hunyuan, write

DIT: dict[str, Any] = {
    "image_model": "hunyuan_video", "in_channels": 65, "out_channels": 32, "vec_in_dim": None,
    "context_in_dim": 32, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1, "depth": 2,
    "depth_single_blocks": 0, "axes_dim": [16, 56, 56], "theta": 256, "patch_size": [1, 1, 1],
    "qkv_bias": True, "guidance_embed": False, "byt5": True, "meanflow": False,
    "use_cond_type_embedding": True, "vision_in_dim": 1152, "meanflow_sum": True,
}  # fmt: skip
BYT5_WIDTH = 1472  # the diffusion model's ByT5 mapper input (model.py:259), so the glyph encoder's d_model
VAE_CHANNELS = [8, 8, 16, 32, 64]  # 4 downsamples: 16x spatial; 64 = 2 x 32 latent channels at the bottom
SIGLIP: dict[str, Any] = {
    "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": 56,
    "intermediate_size": 64, "model_type": "siglip_vision_model", "num_attention_heads": 16,
    "num_hidden_layers": 2, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}  # fmt: skip


def diffusion_model(salt: str) -> Callable[[], StateDict]:
    """A tiny HunyuanVideo 1.5 diffusion model (t2v and i2v share the layout; the salt sets the weights)."""

    def make() -> StateDict:
        return _weights(_dit(), salt, torch.bfloat16)

    return make


def _dit() -> torch.nn.Module:
    return comfy.ldm.hunyuan_video.model.HunyuanVideo(
        **DIT, device="meta", dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init
    )


def _in_block(key: str, shape: Shape) -> bool:
    return is_linear_weight(key, shape) and key.startswith("double_blocks.")


def lora() -> StateDict:
    """A rank-4 LoRA (ComfyUI key names) on the tiny diffusion model's block linears."""
    shapes = {key: tuple(t.shape) for key, t in _dit().state_dict().items()}
    return lora_state_dict(shapes, _in_block, "hunyuan-video-15-lora-a")


def byt5_small() -> StateDict:
    """Tiny ByT5-small glyph encoder: one gated-gelu block of d_model 1472, ByT5's own 1510 tokens."""
    config = _config("byt5_config_small_glyph.json", num_layers=1, num_heads=1, d_kv=64, d_ff=64)
    model = comfy.text_encoders.t5.T5(config, torch.float32, "meta", comfy.ops.manual_cast)
    return _weights(model, "byt5_small", torch.float16)


def vae() -> StateDict:
    """Tiny HunyuanVideo 1.5 VAE: 32 latent channels, 16x spatial and 4x temporal compression."""
    model, _ = hunyuan_video_15_vae(VAE_CHANNELS, z_channels=32, num_res_blocks=1)
    return _weights(model, "hunyuan_video_15_vae", torch.float32)


def siglip() -> StateDict:
    """Tiny SigLIP vision tower (the i2v image encoder): 1152 wide, two layers, 56 px input."""
    model = comfy.clip_model.CLIPVisionModelProjection(SIGLIP, torch.float32, "meta", comfy.ops.manual_cast)
    return _weights(model, "siglip", torch.float16)


FILES: Mapping[str, Callable[[], StateDict]] = {
    "diffusion_models/tiny/hunyuan-video-15-t2v-bf16.safetensors": diffusion_model("hunyuan-video-15-t2v"),
    "diffusion_models/tiny/hunyuan-video-15-i2v-bf16.safetensors": diffusion_model("hunyuan-video-15-i2v"),
    "text_encoders/tiny/qwen25-vl-4l.safetensors": qwen25_vl_hunyuan,
    "text_encoders/tiny/byt5-small-glyph.safetensors": byt5_small,
    "vae/tiny/hunyuan-video-15-vae.safetensors": vae,
    "clip_vision/tiny/siglip-56.safetensors": siglip,
    "loras/tiny/hunyuan-video-15-lora-a.safetensors": lora,
}


def build(models_dir: Path) -> list[Path]:
    """Write the tiny HunyuanVideo 1.5 files under `models_dir` (same bytes on every run)."""
    return write(Path(models_dir), FILES)
