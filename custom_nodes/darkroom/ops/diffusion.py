"""Build ComfyUI diffusion models from our inferred configs: the steps of comfy/sd.py:1454
`load_diffusion_model_state_dict` (supported_models config -> get_model -> weights -> ModelPatcher)
without its detection, with strict key checks before anything is allocated, and weights streamed in
one module at a time so no second copy of the model is ever held.

FLUX.2 note: model_base.Flux.encode_adm reads `pooled_output`, so FLUX.2 conditioning must carry one
(the text-encoder side provides it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import comfy.ldm.flux.model
import comfy.ldm.lumina.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.qwen_image.model
import comfy.ldm.wan.model
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import comfy.supported_models_base
import torch

from ..formats.arch import ArchConfig, Family, ModelFileError, Shape, find_prefix, infer, quantisable
from ..formats.checkpoint import (
    Checkpoint,
    CheckpointMismatchError,
    LoadPlan,
    WeightDtype,
    check_keys,
    read_header,
)
from .evaluations import count_evaluations
from .speed import apply_speed

log = logging.getLogger(__name__)

_UNET_CLASSES: dict[Family, type[torch.nn.Module]] = {
    Family.FLUX: comfy.ldm.flux.model.Flux,
    Family.WAN: comfy.ldm.wan.model.WanModel,
    Family.ZIMAGE: comfy.ldm.lumina.model.NextDiT,
    Family.SD3: comfy.ldm.modules.diffusionmodules.mmdit.MMDiT,
    Family.QWEN_IMAGE: comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,
}
_VARIANT_UNET_CLASSES: dict[str, type[torch.nn.Module]] = {"wan22-s2v": comfy.ldm.wan.model.WanModel_S2V}
_MODEL_CONFIGS: dict[str, type[comfy.supported_models_base.BASE]] = {
    "flux2": comfy.supported_models.Flux2,
    "flux1-dev": comfy.supported_models.Flux,
    "flux1-schnell": comfy.supported_models.FluxSchnell,
    "wan21-t2v": comfy.supported_models.WAN21_T2V,
    "wan21-i2v": comfy.supported_models.WAN21_I2V,
    "wan22-ti2v-5b": comfy.supported_models.WAN22_T2V,
    "wan22-s2v": comfy.supported_models.WAN22_S2V,
    "zimage": comfy.supported_models.ZImage,
    "sd3": comfy.supported_models.SD3,  # SD3 medium, SD 3.5 large (and its turbo)
    "sd35-medium": comfy.supported_models.SD3,  # MMDiT-X: ComfyUI serves it with the same config class
    "qwen-image": comfy.supported_models.QwenImage,
    "qwen-image-edit-2511": comfy.supported_models.QwenImage,
    "qwen-image-layered": comfy.supported_models.QwenImage,
}


def inspect_file(
    path: Path, family: Family, *, weight_dtype: WeightDtype = WeightDtype.DEFAULT,
    config_override: Mapping[str, Any] | None = None,
) -> ArchConfig:  # fmt: skip
    """Every check a load makes, from the header alone (family, config, strict keys and shapes against a
    meta-device model, weight_dtype combination); returns the config a load would use."""
    with _checked(path, family, weight_dtype, config_override) as (_, config):
        return config


@contextlib.contextmanager
def _checked(
    path: Path, family: Family, weight_dtype: WeightDtype, config_override: Mapping[str, Any] | None
) -> Iterator[tuple[Checkpoint, ArchConfig]]:
    """The open checkpoint and its inferred config, once family, dtype and every key have checked out."""
    header = read_header(path)
    prefix = find_prefix(header.tensors, family, str(path))
    with Checkpoint(header, prefix) as ckpt:
        ckpt.check_weight_dtype(weight_dtype)
        config = infer(family, ckpt.shapes(), ckpt.source, config_override)
        check_keys(ckpt.source, config.variant, expected_shapes(config), ckpt.shapes())
        yield ckpt, config


def expected_shapes(config: ArchConfig) -> dict[str, Shape]:
    """State-dict shapes of ComfyUI's model for `config`, built on the meta device (no memory)."""
    cls = _VARIANT_UNET_CLASSES.get(config.variant, _UNET_CLASSES[config.family])
    model = cls(
        **config.unet_config, device="meta", dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init
    )
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _inference_dtypes(
    model_config: comfy.supported_models_base.BASE, weight_dtype: WeightDtype, quantised: int,
    floats: Mapping[torch.dtype, int],
) -> tuple[torch.dtype, torch.dtype | None]:  # fmt: skip
    """(storage dtype of unquantised weights, compute dtype or None): as stored unless asked for bf16;
    the compute dtype is picked by ComfyUI's own rules, as in sd.py."""
    supported = list(model_config.supported_inference_dtypes)
    load_device = comfy.model_management.get_torch_device()
    if weight_dtype is WeightDtype.BF16 or not floats:
        unet_dtype = torch.bfloat16
    else:
        unet_dtype = max(floats, key=lambda d: floats[d])
        if unet_dtype not in supported:
            unet_dtype = comfy.model_management.unet_dtype(
                model_params=sum(floats.values()), supported_dtypes=supported
            )
    manual_cast = comfy.model_management.unet_manual_cast(
        None if quantised else unet_dtype, load_device, supported
    )
    return unet_dtype, manual_cast


def _match_params(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give each loaded tensor its parameter's dtype and device, so it can be assigned in place of the
    (never touched) empty parameter instead of copied into it: one allocation per weight, not two."""
    for name, tensor in tensors.items():
        current = module._parameters.get(name, module._buffers.get(name))
        if current is not None and (current.dtype, current.device) != (tensor.dtype, tensor.device):
            tensors[name] = tensor.to(dtype=current.dtype, device=current.device)


def _stream_weights(diffusion_model: torch.nn.Module, ckpt: Checkpoint, plan: LoadPlan, family: str) -> None:
    for module_name, tensors in ckpt.iter_modules(plan):
        module = diffusion_model.get_submodule(module_name) if module_name else diffusion_model
        _match_params(module, tensors)
        missing: list[str] = []
        unexpected: list[str] = []
        errors: list[str] = []
        # Non-recursive, per module: torch's load_state_dict would visit children too, and ComfyUI's
        # mixed-precision Linear raises when its weight is absent from the dict it is handed.
        assign = {"assign_to_params_buffers": True}
        module._load_from_state_dict(tensors, "", assign, True, missing, unexpected, errors)
        if missing or unexpected:
            where = f"{module_name}." if module_name else ""
            raise CheckpointMismatchError(
                ckpt.source, family, [where + k for k in missing], [where + k for k in unexpected], []
            )
        if errors:
            raise ModelFileError(f"{ckpt.source}: cannot load {module_name!r}: {'; '.join(errors)}")


def load_diffusion_model(
    path: Path, family: Family, *, weight_dtype: WeightDtype = WeightDtype.DEFAULT,
    config_override: Mapping[str, Any] | None = None,
) -> comfy.model_patcher.ModelPatcher:  # fmt: skip
    """Load a FLUX, Wan, Z-Image, SD3 or Qwen-Image diffusion model file as a ModelPatcher, served as
    `weight_dtype`."""
    with _checked(path, family, weight_dtype, config_override) as (ckpt, config):
        plan = LoadPlan(weight_dtype, partial(quantisable, family))
        quantised, floats = ckpt.output_summary(plan)
        model_config = _MODEL_CONFIGS[config.variant](config.unet_config)
        if quantised:
            model_config.quant_config = {"mixed_ops": True}
        unet_dtype, manual_cast = _inference_dtypes(model_config, weight_dtype, quantised, floats)
        model_config.set_inference_dtype(unet_dtype, manual_cast)
        log.info(
            "%s: %s; %d fp8 layers, weights %s, compute %s",
            path,
            config.describe(),
            quantised,
            unet_dtype,
            manual_cast,
        )
        offload_device = comfy.model_management.unet_offload_device()
        model = model_config.get_model({}, "", device=offload_device)
        _stream_weights(model.diffusion_model, ckpt, plan, config.variant)
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=offload_device
    )
    return apply_speed(count_evaluations(patcher), path.name)
