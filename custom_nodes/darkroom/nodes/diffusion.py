"""Diffusion-model loader nodes: DarkroomFluxLoader (FLUX.2, FLUX.1 dev/schnell), DarkroomWanLoader
(Wan 2.1 layout incl. each Wan 2.2 A14B expert, Wan 2.2 TI2V-5B), DarkroomZImageLoader (Z-Image) and
DarkroomSD3Loader (SD3, SD 3.5 large and medium) and DarkroomQwenImageLoader (Qwen-Image,
Qwen-Image-Edit 2509/2511), and DarkroomDiffusionLoader (any of them, the family an input). Node ids are
public API."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..formats.arch import Family, ModelFileError, parse_override
from ..formats.checkpoint import WeightDtype
from ..ops.diffusion import inspect_file, load_diffusion_model
from ..ops.loaded import remember

_FOLDER = "diffusion_models"
_WEIGHT_DTYPE_TIP = (
    "How weights are held in memory. default: as stored in the file. bf16: everything bf16 (fp8 files "
    "are dequantised). fp8_*: linear weights inside the blocks quantised on load from a bf16/fp16 file, "
    "tensor by tensor (no full-precision copy); *_scaled adds a per-tensor scale (better quality, same size)."
)
_OVERRIDE_TIP = (
    'Optional JSON object merged over the config inferred from the file, e.g. {"num_heads": 24}. Leave empty '
    "unless the inferred config is wrong (it is logged when the model loads)."
)


class _DiffusionLoader(io.ComfyNode):
    FAMILY = Family.FLUX
    NODE_ID = ""
    DISPLAY = ""
    MODEL_TIP = ""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY,
            category="darkroom/loaders",
            description=cls.MODEL_TIP,
            inputs=[
                io.Combo.Input(
                    "model_name", options=folder_paths.get_filename_list(_FOLDER), tooltip=cls.MODEL_TIP
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=[w.value for w in WeightDtype],
                    default="default",
                    tooltip=_WEIGHT_DTYPE_TIP,
                ),
                io.String.Input(
                    "config_override", optional=True, default="", multiline=True, tooltip=_OVERRIDE_TIP
                ),
            ],
            outputs=[io.Model.Output(tooltip="The diffusion model, ready for samplers and LoRA loaders.")],
        )

    @classmethod
    def validate_inputs(
        cls,
        model_name: str | None = None,
        weight_dtype: str | None = None,
        config_override: str | None = None,
    ) -> bool | str:
        """Header-only checks, so a wrong file or bad combination fails at queue time, not mid-run."""
        try:
            override = parse_override(config_override)
            if model_name is None or weight_dtype is None:  # linked inputs: checked when the node runs
                return True
            if weight_dtype not in {w.value for w in WeightDtype}:
                return f"weight_dtype {weight_dtype!r} is not one of {[w.value for w in WeightDtype]}"
            path = folder_paths.get_full_path(_FOLDER, model_name)
            if path is None:
                return f"{model_name!r} is not in models/{_FOLDER}; put the file there or pick another"
            dtype = WeightDtype(weight_dtype)
            inspect_file(Path(path), cls.FAMILY, weight_dtype=dtype, config_override=override)
        except ModelFileError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str, config_override: str | None = None) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise(_FOLDER, model_name))
        model = load_diffusion_model(
            path,
            cls.FAMILY,
            weight_dtype=WeightDtype(weight_dtype),
            config_override=parse_override(config_override),
        )
        remember(model, "diffusion_model", model_name)
        return io.NodeOutput(model)


class DarkroomFluxLoader(_DiffusionLoader):
    """FLUX.2 and FLUX.1 (dev, schnell) at any width and depth; config inferred from the tensors."""

    FAMILY = Family.FLUX
    NODE_ID = "DarkroomFluxLoader"
    DISPLAY = "Load FLUX Diffusion Model (darkroom)"
    MODEL_TIP = (
        "A FLUX.2 or FLUX.1 (dev/schnell) diffusion-model file from models/diffusion_models: bf16/fp16, "
        "fp8 or scaled fp8. Heads, rope axes, depth and widths are read from the tensors; wrong or damaged "
        "files are rejected before loading. FLUX.2 conditioning needs a pooled_output."
    )


class DarkroomWanLoader(_DiffusionLoader):
    """Wan 2.1 layout (incl. each Wan 2.2 A14B expert) and Wan 2.2 TI2V-5B."""

    FAMILY = Family.WAN
    NODE_ID = "DarkroomWanLoader"
    DISPLAY = "Load Wan Diffusion Model (darkroom)"
    MODEL_TIP = (
        "A Wan diffusion-model file from models/diffusion_models: Wan 2.1 (T2V/I2V), Wan 2.2 TI2V-5B "
        "(48-channel latent), or one Wan 2.2 A14B expert (use two loaders: high-noise and low-noise). "
        "bf16/fp16, fp8 or scaled fp8; wrong or damaged files are rejected before loading."
    )


class DarkroomZImageLoader(_DiffusionLoader):
    """Z-Image (Lumina 2's NextDiT with Z-Image's modulation) at any width and depth."""

    FAMILY = Family.ZIMAGE
    NODE_ID = "DarkroomZImageLoader"
    DISPLAY = "Load Z-Image Diffusion Model (darkroom)"
    MODEL_TIP = (
        "A Z-Image (Turbo) diffusion-model file from models/diffusion_models: bf16/fp16, fp8 or scaled fp8. "
        "Width, heads, depth and FFN width are read from the tensors (ComfyUI's own detection knows only "
        "the released 3840-wide model); wrong or damaged files are rejected before loading."
    )


class DarkroomSD3Loader(_DiffusionLoader):
    """SD3 and SD 3.5 large / medium (MMDiT, MMDiT-X) at any depth; config read from the tensors."""

    FAMILY = Family.SD3
    NODE_ID = "DarkroomSD3Loader"
    DISPLAY = "Load SD3 Diffusion Model (darkroom)"
    MODEL_TIP = (
        "An SD3 / SD 3.5 (large or medium) diffusion model from models/diffusion_models: a diffusion-model "
        "file or a whole single-file checkpoint (only its diffusion model is read). bf16/fp16, fp8 or scaled "
        "fp8; depth, MMDiT-X layers and widths are read from the tensors, wrong or damaged files are "
        "rejected before loading."
    )


class DarkroomQwenImageLoader(_DiffusionLoader):
    """Qwen-Image and Qwen-Image-Edit (2509, 2511) at any width and depth."""

    FAMILY = Family.QWEN_IMAGE
    NODE_ID = "DarkroomQwenImageLoader"
    DISPLAY = "Load Qwen-Image Diffusion Model (darkroom)"
    MODEL_TIP = (
        "A Qwen-Image or Qwen-Image-Edit (2509, 2511) diffusion-model file from models/diffusion_models: "
        "bf16/fp16, fp8 or scaled fp8. Heads, rope axes, depth and widths are read from the tensors (2511 "
        "is recognised by its own marker tensor); wrong or damaged files are rejected before loading."
    )


_BY_FAMILY: dict[Family, type[_DiffusionLoader]] = {
    c.FAMILY: c
    for c in (DarkroomFluxLoader, DarkroomWanLoader, DarkroomZImageLoader, DarkroomSD3Loader,
              DarkroomQwenImageLoader)
}  # fmt: skip


class DarkroomDiffusionLoader(_DiffusionLoader):
    """Any family's loader, the family an input: one graph serves every family (LoRA training's)."""

    NODE_ID = "DarkroomDiffusionLoader"
    DISPLAY = "Load Diffusion Model, any family (darkroom)"
    MODEL_TIP = "A diffusion-model file of the family named, loaded and checked as that family's loader does."

    @classmethod
    def define_schema(cls) -> io.Schema:
        schema = super().define_schema()
        family = io.Combo.Input(
            "family", options=[f.value for f in _BY_FAMILY], default=Family.FLUX.value,
            tooltip="The file's model family: that family's loader checks and builds it.",
        )  # fmt: skip
        schema.inputs = [*schema.inputs, family]
        return schema

    @classmethod
    def validate_inputs(  # type: ignore[override]
        cls,
        model_name: str | None = None,
        weight_dtype: str | None = None,
        config_override: str | None = None,
        family: str | None = None,
    ) -> bool | str:
        if family is not None and family not in {f.value for f in _BY_FAMILY}:
            return f"family {family!r} is not one of {[f.value for f in _BY_FAMILY]}"
        loader = _BY_FAMILY[Family(family or Family.FLUX.value)]
        return loader.validate_inputs(model_name, weight_dtype, config_override)

    @classmethod
    def execute(  # type: ignore[override]
        cls, model_name: str, weight_dtype: str, config_override: str | None = None, family: str = "flux"
    ) -> io.NodeOutput:
        return _BY_FAMILY[Family(family)].execute(model_name, weight_dtype, config_override)


NODES: list[type[io.ComfyNode]] = [*_BY_FAMILY.values(), DarkroomDiffusionLoader]
