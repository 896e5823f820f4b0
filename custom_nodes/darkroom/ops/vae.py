"""VAEs for FLUX.2, FLUX.1, Wan 2.1, Wan 2.2, SD3 and HunyuanVideo 1.5 as ComfyUI VAE objects, sized from
their own weights.

ComfyUI's VAE class detects the architecture and hard-codes some widths (comfy/sd.py:380-545: the KL
autoencoder's ch 128 / ch_mult [1, 2, 4, 4], Wan 2.2's dim 160 and decoder dim 256, HunyuanVideo 1.5's
block widths [128, 256, 512, 1024, 1024]), so a model at any
other width does not load through it. Here the caller names the family, the widths are read off the
weights, ComfyUI's own autoencoder classes are built from them, and the keys are checked strictly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import comfy.diffusers_convert
import comfy.ldm.wan.vae
import comfy.ldm.wan.vae2_2
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

from ..formats.arch import count_blocks
from ..formats.model_files import ModelFileMismatchError, check_keys, parse_enum, read_shapes

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class VAEFamily(StrEnum):
    FLUX2 = "flux2"
    FLUX1 = "flux1"
    WAN21 = "wan21"
    WAN22 = "wan22"
    SD3 = "sd3"  # FLUX.1's autoencoder layout (z 16, no quant convs) with SD3's own weights
    HUNYUAN_VIDEO_15 = "hunyuan_video_15"


TITLES = {
    VAEFamily.FLUX2: "a FLUX.2 VAE (KL autoencoder, z 32, batch-norm latent)",
    VAEFamily.FLUX1: "a FLUX.1 VAE (KL autoencoder, z 16)",
    VAEFamily.WAN21: "a Wan 2.1 VAE (16 latent channels, 8x spatial)",
    VAEFamily.WAN22: "a Wan 2.2 VAE (48 latent channels, 16x spatial)",
    VAEFamily.SD3: "an SD3 VAE (KL autoencoder, z 16)",
    VAEFamily.HUNYUAN_VIDEO_15: "a HunyuanVideo 1.5 VAE (32 latent channels, 16x spatial, causal 3D)",
}
Z_CHANNELS = {
    VAEFamily.FLUX2: 32, VAEFamily.FLUX1: 16, VAEFamily.WAN21: 16, VAEFamily.WAN22: 48, VAEFamily.SD3: 16,
    VAEFamily.HUNYUAN_VIDEO_15: 32,
}  # fmt: skip
# Both Wan VAEs keep the real block layout; only the widths are read off the weights (sd.py:540-560).
WAN_LAYOUT: dict[str, Any] = {
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}
_KL_SIGNATURE = ("encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "decoder.conv_in.weight")
_WAN_SIGNATURE = "decoder.middle.0.residual.0.gamma"
_WAN22_SIGNATURE = "decoder.upsamples.0.upsamples.0.residual.2.weight"
_DIFFUSERS_SIGNATURE = "decoder.up_blocks.0.resnets.0.norm1.weight"
_HUNYUAN15_SIGNATURE = "decoder.conv_in.conv.weight"  # its causal convs wrap a Conv3d (vae_refiner.py)


def guess_family(sd: Mapping[str, Any]) -> VAEFamily | None:
    """The family a VAE state dict looks like, or None."""
    if _WAN_SIGNATURE in sd:
        return VAEFamily.WAN22 if _WAN22_SIGNATURE in sd else VAEFamily.WAN21
    if _HUNYUAN15_SIGNATURE in sd:
        return VAEFamily.HUNYUAN_VIDEO_15
    if all(key in sd for key in _KL_SIGNATURE):
        return VAEFamily.FLUX2 if "bn.running_mean" in sd else VAEFamily.FLUX1
    return None


def _normalise(sd: StateDict) -> StateDict:
    if _DIFFUSERS_SIGNATURE in sd:  # diffusers layout, as sd.py:311 converts it
        sd = comfy.diffusers_convert.convert_vae_state_dict(sd)
    if "decoder.post_quant_conv.weight" in sd:  # BFL's FLUX.2 layout keeps the quant convs inside
        replace = {"decoder.post_quant_conv.": "post_quant_conv.", "encoder.quant_conv.": "quant_conv."}
        sd = comfy.utils.state_dict_prefix_replace(sd, replace)
    return dict(sd)


def _signature(family: VAEFamily) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Keys a family's files must hold, and keys that mark another family."""
    bn = ("bn.running_mean", "bn.running_var")
    return {
        VAEFamily.FLUX2: ((*_KL_SIGNATURE, *bn), ()),
        VAEFamily.FLUX1: (_KL_SIGNATURE, bn),
        VAEFamily.SD3: (_KL_SIGNATURE, bn),
        VAEFamily.WAN21: ((_WAN_SIGNATURE,), (_WAN22_SIGNATURE,)),
        VAEFamily.WAN22: ((_WAN_SIGNATURE, _WAN22_SIGNATURE), ()),
        VAEFamily.HUNYUAN_VIDEO_15: ((_HUNYUAN15_SIGNATURE,), (_WAN_SIGNATURE, *_KL_SIGNATURE[1:])),
    }[family]


def _check_family(path: Path, sd: Mapping[str, torch.Tensor], family: VAEFamily) -> None:
    required, foreign = _signature(family)
    missing = [key for key in required if key not in sd]
    unexpected = [key for key in foreign if key in sd]
    guessed = guess_family(sd)
    if missing or unexpected:
        looks = (
            TITLES[guessed] if guessed else f"no known VAE ({len(sd)} keys, e.g. {', '.join(sorted(sd)[:3])})"
        )
        raise ModelFileMismatchError(
            path,
            f"this looks like {looks}",
            expected=TITLES[family],
            fix=(
                f"Use a VAE of that family (in a workflow, this file loads with family {guessed.value})."
                if guessed
                else "Use a VAE file of the chosen family."
            ),
            missing=missing,
            unexpected=unexpected,
        )
    z = (
        sd["conv2.weight"].shape[0]
        if "conv2.weight" in sd
        else sd[_HUNYUAN15_SIGNATURE if _HUNYUAN15_SIGNATURE in sd else "decoder.conv_in.weight"].shape[1]
    )
    if z != Z_CHANNELS[family]:
        raise ModelFileMismatchError(
            path,
            f"its latent has {z} channels",
            expected=TITLES[family],
            fix="This VAE belongs to another model family (SD1.x/SDXL VAEs have 4, SD3 16, Wan 2.2 48).",
        )


def kl_ddconfig(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Encoder/Decoder config of a KL autoencoder (ldm/modules/diffusionmodules/model.py) from weights."""
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = count_blocks(sd, "encoder.down.")
    return {
        "double_z": True,
        "z_channels": sd["decoder.conv_in.weight"].shape[1],
        "resolution": 256,
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_ch": sd["decoder.conv_out.weight"].shape[0],
        "ch": ch,
        "ch_mult": [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
        "num_res_blocks": count_blocks(sd, "encoder.down.0.block."),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def _kl_vae(sd: Mapping[str, torch.Tensor], family: VAEFamily) -> tuple[torch.nn.Module, dict[str, Any]]:
    ddconfig = kl_ddconfig(sd)
    ratio = 2 ** (len(ddconfig["ch_mult"]) - 1)
    attributes: dict[str, Any] = {"latent_channels": ddconfig["z_channels"]}
    if family is VAEFamily.FLUX2:  # the latent is 2x2-patched and batch-normed: 4 x z channels at 2 x ratio
        ddconfig["batch_norm_latent"] = True
        ratio *= 2
        attributes["latent_channels"] *= 4
        stock_decode = _stock_kl_memory()[1]
        attributes["memory_used_decode"] = lambda shape, dtype: stock_decode(shape, dtype) * 4.0
    attributes.update(downscale_ratio=ratio, upscale_ratio=ratio)
    quant = sd.get("post_quant_conv.weight")
    return kl_autoencoder(ddconfig, embed_dim=None if quant is None else quant.shape[1]), attributes


def kl_autoencoder(ddconfig: Mapping[str, Any], *, embed_dim: int | None) -> torch.nn.Module:
    """ComfyUI's KL autoencoder as sd.py:428-437 builds it: quant convs only when the file has them."""
    if embed_dim is not None:  # only this class carries the FLUX.2 batch-norm latent
        model: torch.nn.Module = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=embed_dim)
        return model
    regularizer = {"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"}
    encoder = {"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dict(ddconfig)}
    decoder = {"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dict(ddconfig)}
    model = AutoencodingEngine(regularizer_config=regularizer, encoder_config=encoder, decoder_config=decoder)
    return model


def _video_ratios(spatial: int) -> dict[str, Any]:
    """Wan's causal 4x temporal compression (first frame alone), as sd.py:540-560 sets it."""
    return {
        "upscale_ratio": (lambda a: max(0, a * 4 - 3), spatial, spatial),
        "upscale_index_formula": (4, spatial, spatial),
        "downscale_ratio": (lambda a: max(0, math.floor((a + 3) / 4)), spatial, spatial),
        "downscale_index_formula": (4, spatial, spatial),
        "latent_dim": 3,
        "working_dtypes": [torch.bfloat16, torch.float16, torch.float32],
    }


def _wan21_vae(sd: Mapping[str, torch.Tensor], family: VAEFamily) -> tuple[torch.nn.Module, dict[str, Any]]:
    dim = sd["decoder.head.0.gamma"].shape[0]
    image_channels = sd["encoder.conv1.weight"].shape[1]
    z_dim = sd["conv2.weight"].shape[0]
    model = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=z_dim, image_channels=image_channels, **WAN_LAYOUT)
    attributes = {
        **_video_ratios(8),
        "latent_channels": z_dim,
        "output_channels": image_channels,
        "pad_channel_value": 1.0,
        "memory_used_encode": lambda shape, dtype: (
            (1500 if shape[2] <= 4 else 6000) * shape[3] * shape[4] * mm.dtype_size(dtype)
        ),
        "memory_used_decode": lambda shape, dtype: (
            (2200 if shape[2] <= 4 else 7000) * shape[3] * shape[4] * (8 * 8) * mm.dtype_size(dtype)
        ),
    }
    return model, attributes


def _wan22_vae(sd: Mapping[str, torch.Tensor], family: VAEFamily) -> tuple[torch.nn.Module, dict[str, Any]]:
    dim = sd["encoder.conv1.weight"].shape[0]
    dec_dim = sd["decoder.head.0.gamma"].shape[0]
    z_dim = sd["conv2.weight"].shape[0]
    model = comfy.ldm.wan.vae2_2.WanVAE(dim=dim, dec_dim=dec_dim, z_dim=z_dim, **WAN_LAYOUT)
    attributes = {
        **_video_ratios(16),
        "latent_channels": z_dim,
        "memory_used_encode": lambda shape, dtype: 3300 * shape[3] * shape[4] * mm.dtype_size(dtype),
        "memory_used_decode": lambda shape, dtype: (
            8000 * shape[3] * shape[4] * (16 * 16) * mm.dtype_size(dtype)
        ),
    }
    return model, attributes


def hunyuan_video_15_vae(
    block_out_channels: list[int], *, z_channels: int, num_res_blocks: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ComfyUI's HunyuanVideo 1.5 autoencoder at these widths, with sd.py:486-500's attributes."""
    ddconfig = {
        "block_out_channels": block_out_channels, "in_channels": 3, "out_channels": 3,
        "z_channels": z_channels, "num_res_blocks": num_res_blocks, "ffactor_spatial": 16,
        "ffactor_temporal": 4, "downsample_match_channel": True, "upsample_match_channel": True,
    }  # fmt: skip
    model = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.EmptyRegularizer"},
        encoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.hunyuan_video.vae_refiner.Decoder", "params": ddconfig},
    )
    attributes = {
        **_video_ratios(16),
        "latent_channels": z_channels,
        "working_dtypes": [torch.float16, torch.bfloat16, torch.float32],
        "memory_used_encode": lambda shape, dtype: 1400 * 9 * shape[-2] * shape[-1] * mm.dtype_size(dtype),
        "memory_used_decode": lambda shape, dtype: (
            3600 * 4 * shape[-2] * shape[-1] * 16 * 16 * mm.dtype_size(dtype)
        ),
    }
    return model, attributes


def _hunyuan15_vae(
    sd: Mapping[str, torch.Tensor], family: VAEFamily
) -> tuple[torch.nn.Module, dict[str, Any]]:
    levels = count_blocks(sd, "encoder.down.")
    widths = [sd[f"encoder.down.{i}.block.0.conv2.conv.weight"].shape[0] for i in range(levels)]
    return hunyuan_video_15_vae(
        widths,
        z_channels=sd[_HUNYUAN15_SIGNATURE].shape[1],
        num_res_blocks=count_blocks(sd, "encoder.down.0.block."),
    )


_BUILDERS: dict[VAEFamily, Callable[..., tuple[torch.nn.Module, dict[str, Any]]]] = {
    VAEFamily.FLUX2: _kl_vae,
    VAEFamily.FLUX1: _kl_vae,
    VAEFamily.SD3: _kl_vae,
    VAEFamily.WAN21: _wan21_vae,
    VAEFamily.WAN22: _wan22_vae,
    VAEFamily.HUNYUAN_VIDEO_15: _hunyuan15_vae,
}


def build_model(sd: Mapping[str, torch.Tensor], family: VAEFamily) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The family's autoencoder at the widths `sd` has (weights not loaded) and its VAE attributes."""
    return _BUILDERS[family](sd, family)


def _stock_kl_memory() -> tuple[Callable[..., float], Callable[..., float]]:
    ratio = 2.73 if mm.is_amd() else 1.0  # VAE_KL_MEM_RATIO in sd.py:315
    return (
        lambda shape, dtype: (1767 * shape[2] * shape[3]) * mm.dtype_size(dtype) * ratio,
        lambda shape, dtype: (2178 * shape[2] * shape[3] * 64) * mm.dtype_size(dtype) * ratio,
    )


class InferredVAE(comfy.sd.VAE):
    """comfy.sd.VAE around an explicitly built model: the stock constructor would detect it again.

    It sets the stock defaults (sd.py:319-337), the family's attributes, then the stock tail
    (sd.py:672-684: device, dtype, patcher); every method is ComfyUI's own.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attributes: Mapping[str, Any],
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.memory_used_encode, self.memory_used_decode = _stock_kl_memory()
        self.downscale_ratio: Any = 8
        self.upscale_ratio: Any = 8
        self.latent_channels = 4
        self.latent_dim = 2
        self.output_channels = 3
        self.pad_channel_value: Any = None
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.disable_offload = False
        self.not_video = False
        self.size = None
        self.downscale_index_formula: Any = None
        self.upscale_index_formula: Any = None
        self.extra_1d_channel = None
        self.crop_input = True
        for name, value in attributes.items():
            setattr(self, name, value)
        self.first_stage_model = model.eval()
        self.device = device if device is not None else mm.vae_device()
        self.vae_dtype = dtype if dtype is not None else mm.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.first_stage_model, load_device=self.device, offload_device=mm.vae_offload_device()
        )
        self.model_size()


def inspect_vae(path: Path, family: VAEFamily | str) -> None:
    """The family checks `load_vae` makes, from the safetensors header alone (skipped for other files)."""
    family = parse_enum(VAEFamily, family, "VAE family")
    shapes = read_shapes(Path(path))
    diffusers = shapes is not None and _DIFFUSERS_SIGNATURE in shapes  # converting needs the tensors
    if shapes is not None and not diffusers:
        _check_family(Path(path), _normalise(shapes), family)


def load_vae(
    path: Path,
    family: VAEFamily | str,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> comfy.sd.VAE:
    """A ComfyUI VAE for `family` from one weights file, its widths read off the weights."""
    family = parse_enum(VAEFamily, family, "VAE family")
    path = Path(path)
    sd = _normalise(comfy.utils.load_torch_file(str(path), safe_load=True))
    _check_family(path, sd, family)
    model, attributes = build_model(sd, family)
    fix = "Check the family; the file may be damaged or a variant this loader does not know."
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatch between the inferred layout and the weights
        problem = f"weight shapes do not fit the inferred layout: {str(e).splitlines()[-1].strip()}"
        raise ModelFileMismatchError(path, problem, expected=TITLES[family], fix=fix) from e
    tolerated = frozenset({"bn.num_batches_tracked"})
    check_keys(path, missing, unexpected, expected=TITLES[family], fix=fix, tolerated=tolerated)
    vae = InferredVAE(model, attributes, device=device, dtype=dtype)
    log.info("VAE %s from %s: latent %d ch", family.value, path.name, vae.latent_channels)
    return vae
