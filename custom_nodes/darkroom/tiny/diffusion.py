"""Tiny random-weight diffusion models and LoRAs with the real key layouts (for tests and the dev stack).

Layouts come from ComfyUI's own classes (comfy.ldm.flux.model.Flux with FLUX.2 and FLUX.1 parameters,
comfy.ldm.wan.model.WanModel, comfy.ldm.lumina.model.NextDiT with Z-Image's,
comfy.ldm.modules.diffusionmodules.mmdit.MMDiT, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel), built
on the meta device; values come from fixed per-tensor seeds, so a rebuild writes byte-identical files. Widths
the text-encoder side must match: FLUX.2 context 192 (3 stacked hidden layers of a 64-wide Mistral-3), FLUX.1
context 64 (T5) and vec 64 (CLIP-L), Wan text_dim 64 (umT5), Z-Image cap_feat_dim 64 (Qwen3-4B), SD3 context
4096 (ComfyUI's SD3 encoder pads every token to 4096) and pooled 128 (CLIP-L 64 + CLIP-G 64), Qwen-Image
joint_attention_dim 32 (Qwen2.5-VL).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..formats.arch import ArchConfig, Family, Shape, quantisable
from ..formats.checkpoint import quantise_state_dict, save_state_dict
from ..formats.lora_keys import LoraFormat, render
from ..formats.quant import Fp8Format
from ..ops.diffusion import expected_shapes
from .noise import normal

FLUX2: dict[str, Any] = {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
    "context_in_dim": 192,
    "hidden_size": 128, "mlp_ratio": 3.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [16, 16, 16, 16], "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True,
    "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
    "default_ref_method": "index", "ref_index_scale": 10.0, "txt_norm": False,
}  # fmt: skip
FLUX1: dict[str, Any] = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 64, "context_in_dim": 64,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [8, 28, 28], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [], "ops_bias": True, "txt_norm": False,
}  # fmt: skip
_WAN: dict[str, Any] = {
    "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 128,
    "ffn_dim": 256, "freq_dim": 256, "text_dim": 64, "out_dim": 16, "num_heads": 1, "num_layers": 2,
    "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}  # fmt: skip
# Z-Image's modulation reads a 256-wide timestep embedding, so 256 is the least width; 128-wide heads as
# released. cap_feat_dim 64 is the tiny Qwen3-4B's width.
ZIMAGE: dict[str, Any] = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "n_layers": 1,
    "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "multiple_of": 256, "ffn_dim_multiplier": 8.0 / 3.0,
    "qk_norm": True, "cap_feat_dim": 64, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
}  # fmt: skip
# SD 3.5 medium's layout (MMDiT-X: block 0 has the second attention; q/k RMS norms) at depth 2, which
# fixes the width at 128 (64 x depth). pos_embed covers 64 x 64 patches: images up to 1024 px, so fal's
# size presets (1024 px at most) run on the demo too (with 32 x 32, square_hd failed in the sampler).
SD35: dict[str, Any] = {
    "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
    "adm_in_channels": 128,
    "context_embedder_config": {
        "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128},
    },
    "num_patches": 4096, "pos_embed_max_size": 64, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0],
}  # fmt: skip
QWEN_IMAGE: dict[str, Any] = {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 32,
    "axes_dims_rope": (4, 14, 14), "default_ref_method": "index",
}  # fmt: skip
QWEN_IMAGE_EDIT_2511 = QWEN_IMAGE | {"default_ref_method": "index_timestep_zero"}
WAN22_5B = _WAN | {"in_dim": 48, "out_dim": 48}
WAN_A14B = dict(_WAN)
WAN_A14B_I2V = _WAN | {"in_dim": 36}
# Wan 2.2 S2V: audio_dim is the tiny wav2vec2's width (tiny/encoders.py WAV2VEC2_DIM); ComfyUI's default
# audio-injection layers (0, 4, ...) leave one injector acting on these 2 blocks.
WAN22_S2V = _WAN | {"model_type": "s2v", "audio_dim": 32}

LORA_RANK = 4
_LORA_STRENGTH = 0.5  # LoRA delta ~ half the weight's own spread: visible, still finite


def _seed(name: str, key: str) -> int:
    return zlib.crc32(f"{name}/{key}".encode())


def _init(name: str, key: str, shape: Shape) -> torch.Tensor:
    """Deterministic values: fan-in-scaled weights, near-one norm scales, small biases and modulations."""
    noise = normal(_seed(name, key), shape)
    if key == "casual_audio_encoder.weights":  # S2V divides by their SiLUs' sum: keep them near one
        return 1.0 + 0.05 * noise
    if len(shape) == 1 and not key.endswith(".bias"):
        return 1.0 + 0.05 * noise  # norm scales
    if len(shape) >= 2 and key.endswith(".weight"):
        return noise / math.sqrt(math.prod(shape[1:]))  # fan-in (conv: in channels x kernel)
    return 0.02 * noise


def random_state_dict(config: ArchConfig, name: str) -> dict[str, torch.Tensor]:
    """bf16 weights for `config` with ComfyUI's key layout, seeded by `name`."""
    return {k: _init(name, k, s).to(torch.bfloat16) for k, s in sorted(expected_shapes(config).items())}


def lora_state_dict(
    shapes: Mapping[str, Shape], family: Family | Callable[[str, Shape], bool], name: str
) -> dict[str, torch.Tensor]:
    """Rank-4 LoRA (ComfyUI `diffusion_model.<module>.lora_up/lora_down/alpha` keys) on every block linear
    (of the family, or those a rule picks for a model without one)."""
    in_block = partial(quantisable, family) if isinstance(family, Family) else family
    out: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        if not in_block(key, shape):
            continue
        module, (rows, cols) = key[: -len(".weight")], shape
        std = (_LORA_STRENGTH / cols**0.5 / LORA_RANK**0.5) ** 0.5  # up @ down: ~ strength / sqrt(fan_in)
        up = normal(_seed(name, f"{module}.lora_up"), (rows, LORA_RANK))
        down = normal(_seed(name, f"{module}.lora_down"), (LORA_RANK, cols))
        out[f"diffusion_model.{module}.lora_up.weight"] = (up * std).bfloat16()
        out[f"diffusion_model.{module}.lora_down.weight"] = (down * std).bfloat16()
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(LORA_RANK))
    return out


def _variants(
    family: Family, sd: Mapping[str, torch.Tensor], kinds: tuple[str, ...]
) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    rule: Callable[[str, Shape], bool] = partial(quantisable, family)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for kind in kinds:
        if kind == "bf16":
            out[kind] = dict(sd)
        elif kind == "fp8_scaled":
            out[kind] = quantise_state_dict(sd, Fp8Format.E4M3FN, scaled=True, quantisable=rule)
        else:
            fmt = Fp8Format(kind.replace("fp8_", "float8_"))
            out[kind] = quantise_state_dict(sd, fmt, scaled=False, quantisable=rule)
    return out


# (file stem, family, config, seed name, variants written)
_MODELS: tuple[tuple[str, Family, dict[str, Any], str, tuple[str, ...]], ...] = (
    ("flux2", Family.FLUX, FLUX2, "flux2", ("bf16", "fp8_e4m3fn", "fp8_e5m2", "fp8_scaled")),
    ("flux1", Family.FLUX, FLUX1, "flux1", ("bf16", "fp8_e4m3fn", "fp8_scaled")),
    ("wan22-ti2v-5b", Family.WAN, WAN22_5B, "wan22-5b", ("bf16", "fp8_e4m3fn", "fp8_scaled")),
    ("wan22-a14b-high", Family.WAN, WAN_A14B, "wan-a14b-high", ("bf16", "fp8_scaled")),
    ("wan22-a14b-low", Family.WAN, WAN_A14B, "wan-a14b-low", ("bf16", "fp8_scaled")),
    ("wan22-a14b-i2v-high", Family.WAN, WAN_A14B_I2V, "wan-a14b-i2v-high", ("bf16",)),
    ("wan22-a14b-i2v-low", Family.WAN, WAN_A14B_I2V, "wan-a14b-i2v-low", ("bf16",)),
    ("wan22-s2v", Family.WAN, WAN22_S2V, "wan22-s2v", ("bf16",)),
    ("zimage", Family.ZIMAGE, ZIMAGE, "zimage", ("bf16",)),
    ("sd35", Family.SD3, SD35, "sd35", ("bf16",)),
    ("qwen-image", Family.QWEN_IMAGE, QWEN_IMAGE, "qwen-image", ("bf16", "fp8_scaled")),
    ("qwen-image-edit-2511", Family.QWEN_IMAGE, QWEN_IMAGE_EDIT_2511, "qwen-image-edit-2511", ("bf16",)),
)
# (LoRA stem, family, config it fits)
_LORAS: tuple[tuple[str, Family, dict[str, Any]], ...] = (
    ("flux2", Family.FLUX, FLUX2),
    ("flux1", Family.FLUX, FLUX1),
    ("wan22-5b", Family.WAN, WAN22_5B),
    ("wan-a14b", Family.WAN, WAN_A14B),
    ("zimage", Family.ZIMAGE, ZIMAGE),
    ("sd35", Family.SD3, SD35),
    ("qwen-image", Family.QWEN_IMAGE, QWEN_IMAGE),  # fits Qwen-Image-Edit too (same shapes)
)


def build(models_dir: Path) -> list[Path]:
    """Write every tiny diffusion model and LoRA under `models_dir`; returns the paths written."""
    models_dir = Path(models_dir)
    written: list[Path] = []
    for stem, family, config, seed_name, kinds in _MODELS:
        sd = random_state_dict(ArchConfig(family, stem, config), seed_name)
        for kind, tensors in _variants(family, sd, kinds).items():
            path = models_dir / "diffusion_models" / "tiny" / f"{stem}-{kind}.safetensors"
            save_state_dict(path, tensors)
            written.append(path)
    for stem, family, config in _LORAS:
        shapes = expected_shapes(ArchConfig(family, stem, config))
        for letter in ("a", "b"):
            path = models_dir / "loras" / "tiny" / f"{stem}-lora-{letter}.safetensors"
            save_state_dict(path, lora_state_dict(shapes, family, f"{stem}-lora-{letter}"))
            written.append(path)
    return written + build_lora_renderings(models_dir)


# LoRAs also written in kohya and diffusers naming (the same tensors, renamed; diffusers splits fused q/k/v).
_RENDERED_LORAS = ("flux2", "flux1", "wan22-5b")


def lora_rendering(stem: str, letter: str, fmt: LoraFormat) -> dict[str, torch.Tensor]:
    """Tiny LoRA `<stem>-lora-<letter>` with its keys spelled as `fmt` for its model."""
    family, config = next((f, c) for s, f, c in _LORAS if s == stem)
    shapes = expected_shapes(ArchConfig(family, stem, config))
    return render(lora_state_dict(shapes, family, f"{stem}-lora-{letter}"), shapes, fmt)


def build_lora_renderings(models_dir: Path) -> list[Path]:
    """Write `loras/tiny/<stem>-lora-a-{kohya,diffusers}.safetensors` for FLUX.2, FLUX.1 and Wan 2.2 5B."""
    written = []
    for stem in _RENDERED_LORAS:
        for fmt in (LoraFormat.KOHYA, LoraFormat.DIFFUSERS):
            path = Path(models_dir) / "loras" / "tiny" / f"{stem}-lora-a-{fmt.value}.safetensors"
            save_state_dict(path, lora_rendering(stem, "a", fmt))
            written.append(path)
    return written
