"""Architecture configs inferred from a diffusion model's tensor names and shapes (no ComfyUI import).

ComfyUI's detection (comfy/model_detection.py:190-205, :450-495) hardcodes FLUX heads (48 / 24), FLUX
axes_dim and Wan's `dim // 128` heads, and knows Z-Image only at 3840 wide (:434-444), so only
full-width models load. Here every number comes from the shapes: FLUX heads from the q/k-norm width,
axes_dim derived for that head width, depth from the block count, MLP ratio, biases, guidance and
channel counts from the matching weights; Z-Image likewise (heads, GQA, depth, FFN width).

SD3's MMDiT (comfy/ldm/modules/diffusionmodules/mmdit.py:808) fixes its own width: 64 x depth, one
64-wide head per block, so any depth loads; its config is read as ComfyUI's detection reads it
(model_detection.py:40-79), with the file's block count checked against its width.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Shape = tuple[int, ...]

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
    ]
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
_TUPLE_KEYS = frozenset({"patch_size", "window_size", "axes_dims_rope"})
WAN_HEAD_DIM = 128  # every released Wan (1.3B, 5B, 14B) uses 128-wide heads
# Z-Image's FeedForward width: int(8/3 * dim) rounded up to a multiple of 256 (model_detection.py:437).
ZIMAGE_FFN_MULTIPLIER = 8.0 / 3.0
ZIMAGE_FFN_MULTIPLE = 256


class Family(StrEnum):
    """A diffusion-model family one loader node serves."""

    FLUX = "flux"
    WAN = "wan"
    ZIMAGE = "zimage"
    SD3 = "sd3"
    QWEN_IMAGE = "qwen_image"

    @property
    def label(self) -> str:
        """The family as messages name it."""
        return "Z-Image" if self is Family.ZIMAGE else self.value.upper()


class ModelFileError(ValueError):
    """A model file that cannot be served as asked; the message names the file and the fix."""

    code = "model_file_invalid"


class WrongFamilyError(ModelFileError):
    """The file is not a diffusion model of the family the loader serves."""

    code = "wrong_model_family"


class ArchInferenceError(ModelFileError):
    """The tensors do not determine a valid config, or a config override is invalid."""

    code = "arch_inference_failed"


@dataclass(frozen=True)
class ArchConfig:
    """An inferred architecture: family, variant name and the kwargs for ComfyUI's model class."""

    family: Family
    variant: str
    unet_config: dict[str, Any] = field(hash=False)

    def describe(self) -> str:
        return f"{self.variant} {json.dumps(self.unet_config, sort_keys=True, default=list)}"


# Anchor keys per family, and hints that name what a foreign file probably is.
_ANCHORS: dict[Family, tuple[str, ...]] = {
    Family.FLUX: ("img_in.weight", "txt_in.weight", "final_layer.linear.weight"),
    Family.WAN: ("head.modulation", "patch_embedding.weight", "text_embedding.0.weight"),
    Family.ZIMAGE: ("cap_embedder.1.weight", "x_embedder.weight", "final_layer.linear.weight"),
    Family.SD3: (
        "x_embedder.proj.weight",
        "joint_blocks.0.context_block.attn.qkv.weight",
        "final_layer.linear.weight",
    ),
    Family.QWEN_IMAGE: ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight"),
}
_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "model.")
_FOREIGN_HINTS: tuple[tuple[str, str], ...] = (
    ("head.modulation", "a Wan diffusion model"),
    ("cap_embedder.1.weight", "a Lumina 2 / Z-Image (NextDiT) diffusion model"),
    ("transformer_blocks.0.img_mod.1.weight", "a Qwen-Image diffusion model"),
    ("double_stream_modulation_img.lin.weight", "a FLUX.2 diffusion model"),
    ("double_blocks.0.img_attn.qkv.weight", "a FLUX-style (double/single block) diffusion model"),
    ("input_blocks.0.0.weight", "an SD1/SDXL UNet"),
    ("joint_blocks.0.x_block.attn.qkv.weight", "an SD3 MMDiT"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5/umT5 text encoder"),
    ("text_model.encoder.layers.0.mlp.fc1.weight", "a CLIP text encoder"),
    ("model.layers.0.self_attn.q_proj.weight", "an LLM text encoder (Mistral/Qwen/Llama)"),
    ("decoder.conv_in.weight", "a VAE"),
    ("decoder.middle.0.residual.0.gamma", "a Wan VAE"),
    ("lora_down.weight", "a LoRA"),
    ("lora_A.weight", "a LoRA"),
)


def _guess_kind(keys: Iterable[str]) -> str:
    keys = list(keys)
    for needle, kind in _FOREIGN_HINTS:
        if any(k.endswith(needle) for k in keys):
            return kind
    return "an unrecognised model"


def find_prefix(keys: Iterable[str], family: Family, source: str) -> str:
    """Prefix in front of the model's tensors; WrongFamilyError if the family's anchor tensors are absent."""
    key_set = set(keys)
    for prefix in _PREFIXES:
        if all(prefix + anchor in key_set for anchor in _ANCHORS[family]):
            return prefix
    raise WrongFamilyError(
        f"{source}: not a {family.label} diffusion model: it looks like {_guess_kind(key_set)} "
        f"(missing {', '.join(_ANCHORS[family])}). Pick a {family.label} diffusion-model file "
        f"(models/diffusion_models) or use the loader node for its family."
    )


def count_blocks(shapes: Mapping[str, object], prefix: str) -> int:
    """Number of `<prefix><i>.` blocks (highest index + 1; gaps surface in the strict key check)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for k in shapes if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _shape(shapes: Mapping[str, Shape], key: str, source: str) -> Shape:
    try:
        return shapes[key]
    except KeyError:
        raise ArchInferenceError(
            f"{source}: tensor {key!r} is missing; the file is incomplete, re-download it"
        ) from None


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
    return _shape(shapes, "single_blocks.0.linear2.weight", source)[1] - hidden


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
    hidden, img_in = _shape(shapes, "img_in.weight", source)
    head_dim = _flux_head_dim(shapes, source)
    if hidden % head_dim:
        raise ArchInferenceError(
            f"{source}: hidden size {hidden} is not a multiple of the q/k-norm width {head_dim}"
        )
    depth = count_blocks(shapes, "double_blocks.")
    cfg: dict[str, Any] = {
        "image_model": "flux2" if flux2 else "flux",
        "in_channels": img_in // (patch * patch),
        "out_channels": _shape(shapes, "final_layer.linear.weight", source)[0] // (patch * patch),
        "vec_in_dim": shapes["vector_in.in_layer.weight"][1]
        if "vector_in.in_layer.weight" in shapes
        else None,
        "context_in_dim": _shape(shapes, "txt_in.weight", source)[1],
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
    "casual_audio_encoder.encoder.final_linear.weight": "Wan S2V",
    "audio_proj.audio_proj_glob_1.layer.bias": "Wan HuMo",
    "face_adapter.fuser_blocks.0.k_norm.weight": "Wan Animate",
}


def infer_wan(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for Wan 2.1-layout models (2.1 T2V/I2V, 2.2 A14B experts) and Wan 2.2 TI2V-5B."""
    for key, name in _WAN_UNSUPPORTED.items():
        if key in shapes:
            raise WrongFamilyError(
                f"{source}: a {name} model, which this loader does not serve; use ComfyUI's loader"
            )
    embed = _shape(shapes, "patch_embedding.weight", source)
    patch = tuple(embed[2:])
    dim = _shape(shapes, "head.modulation", source)[-1]
    cfg: dict[str, Any] = {
        "image_model": "wan2.1",
        "model_type": "i2v" if "img_emb.proj.0.bias" in shapes else "t2v",
        "patch_size": patch,
        "in_dim": embed[1],
        "dim": dim,
        "ffn_dim": _shape(shapes, "blocks.0.ffn.0.weight", source)[0],
        "freq_dim": _shape(shapes, "time_embedding.0.weight", source)[1],
        "text_dim": _shape(shapes, "text_embedding.0.weight", source)[1],
        "out_dim": _shape(shapes, "head.head.weight", source)[0] // math.prod(patch),
        "num_heads": wan_num_heads(dim),
        "num_layers": count_blocks(shapes, "blocks."),
        "window_size": (-1, -1),
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in shapes,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "eps": 1e-6,
    }
    if "img_emb.emb_pos" in shapes:
        cfg["flf_pos_embed_token_number"] = shapes["img_emb.emb_pos"][1]
    if "ref_conv.weight" in shapes:
        cfg["in_dim_ref_conv"] = shapes["ref_conv.weight"][1]
    if cfg["out_dim"] == 48:
        variant = "wan22-ti2v-5b"
    elif cfg["model_type"] == "i2v":
        variant = "wan21-i2v"
    else:
        variant = "wan21-t2v"  # also each Wan 2.2 A14B expert (T2V in_dim 16, I2V in_dim 36)
    return ArchConfig(Family.WAN, variant, cfg)


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
    dim, cap_feat_dim = _shape(shapes, "cap_embedder.1.weight", source)
    head_dim = _shape(shapes, "layers.0.attention.q_norm.weight", source)[0]
    n_heads = _shape(shapes, "layers.0.attention.out.weight", source)[1] // head_dim
    qkv_heads = _shape(shapes, "layers.0.attention.qkv.weight", source)[0] // head_dim
    ffn_multiplier, multiple_of = _zimage_ffn(
        dim, _shape(shapes, "layers.0.feed_forward.w1.weight", source)[0]
    )
    patch = 2
    cfg: dict[str, Any] = {
        "image_model": "lumina2",
        "patch_size": patch,
        "in_channels": _shape(shapes, "x_embedder.weight", source)[1] // (patch * patch),
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


def _check_zimage(cfg: Mapping[str, Any], source: str) -> None:
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


def infer_sd3(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for SD3 / SD 3.5 large (MMDiT) and SD 3.5 medium (MMDiT-X: some blocks attend twice)."""
    hidden, in_channels, patch = _shape(shapes, "x_embedder.proj.weight", source)[:3]
    depth = count_blocks(shapes, "joint_blocks.")
    if hidden != SD3_HEAD_DIM * depth:
        raise ArchInferenceError(
            f"{source}: an MMDiT's width is 64 x its depth (ComfyUI's MMDiT fixes it), but this file is "
            f"{hidden} wide with {depth} joint blocks; the file is damaged or not an SD3 model"
        )
    cfg: dict[str, Any] = {
        "in_channels": in_channels,
        "patch_size": patch,
        "out_channels": _shape(shapes, "final_layer.linear.weight", source)[0] // (patch * patch),
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


QWEN_IMAGE_PATCH = 2  # every Qwen-Image release packs 2x2 latent patches (in_channels 64 = 16 x 4)


def infer_qwen_image(shapes: Mapping[str, Shape], source: str) -> ArchConfig:
    """Config for Qwen-Image and Qwen-Image-Edit (2509; 2511 marks itself with an __index_timestep_zero__
    tensor, Layered with an additional timestep embedding), as comfy/model_detection.py:617 reads them,
    plus the widths it leaves at the full model's: heads from the q-norm width, rope axes for that width."""
    inner, in_channels = _shape(shapes, "img_in.weight", source)
    head_dim = _shape(shapes, "transformer_blocks.0.attn.norm_q.weight", source)[0]
    if inner % head_dim:
        raise ArchInferenceError(f"{source}: width {inner} is not a multiple of the q-norm width {head_dim}")
    out = _shape(shapes, "proj_out.weight", source)[0]
    cfg: dict[str, Any] = {
        "image_model": "qwen_image",
        "patch_size": QWEN_IMAGE_PATCH,
        "in_channels": in_channels,
        "out_channels": out // QWEN_IMAGE_PATCH**2,
        "num_layers": count_blocks(shapes, "transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": _shape(shapes, "txt_in.weight", source)[1],
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


def _check_qwen_image(cfg: Mapping[str, Any], source: str) -> None:
    head, axes = cfg["attention_head_dim"], list(cfg["axes_dims_rope"])
    if sum(axes) != head or any(a % 2 for a in axes):
        raise ArchInferenceError(
            f"{source}: axes_dims_rope {axes} must be even numbers summing to attention_head_dim {head}"
        )


def _check_flux(cfg: Mapping[str, Any], source: str) -> None:
    hidden, heads, axes = cfg["hidden_size"], cfg["num_heads"], list(cfg["axes_dim"])
    if heads <= 0 or hidden % heads:
        raise ArchInferenceError(f"{source}: hidden_size {hidden} is not divisible by num_heads {heads}")
    if sum(axes) != hidden // heads or any(a % 2 for a in axes):
        raise ArchInferenceError(
            f"{source}: axes_dim {axes} must be even numbers summing to the head width {hidden // heads}"
        )


def _check_wan(cfg: Mapping[str, Any], source: str) -> None:
    dim, heads = cfg["dim"], cfg["num_heads"]
    if heads <= 0 or dim % heads or (dim // heads) % 2:
        raise ArchInferenceError(
            f"{source}: Wan dim {dim} must split into num_heads {heads} even-width heads"
        )


def _check_sd3(cfg: Mapping[str, Any], source: str) -> None:
    if not isinstance(cfg["depth"], int) or cfg["depth"] <= 0:
        raise ArchInferenceError(f"{source}: SD3 depth must be a positive integer, got {cfg['depth']!r}")


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
    Family.FLUX: _check_flux, Family.WAN: _check_wan, Family.ZIMAGE: _check_zimage, Family.SD3: _check_sd3,
    Family.QWEN_IMAGE: _check_qwen_image,
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
