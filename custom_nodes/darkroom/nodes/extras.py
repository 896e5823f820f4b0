"""Nodes past fal's parameter surface: LoRA stacks, model blends and a VAE guard (the schedule and
sampler overrides are in nodes/sampling.py). Each override node passes its input through unchanged at its
defaults, so a workflow can always include it. Node ids are public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..formats.arch import Family, ModelFileError
from ..formats.checkpoint import WeightDtype
from ..formats.overrides import (
    DEFAULT_MAX_LORAS,
    MAX_LORAS_LIMIT,
    Expert,
    LoraSpec,
    OverrideError,
    check_file_name,
    parse_blend,
    parse_lora_stack,
)
from ..ops.blend import BlendInput, BlendMismatchError, blend_models, cache_key, check_compatible
from ..ops.loaded import remember
from ..ops.lora import apply_stack, resolve
from ..ops.sampling import (
    check_vae,
)

_LORAS_TIP = (
    'JSON list of LoRAs applied in order, e.g. [{"path": "style.safetensors", "scale": 0.8, '
    '"text_encoder_scale": null, "expert": "both"}]. path: a file in models/loras (subfolders such as '
    "cache/ allowed; no absolute paths or '..'). scale 0 skips the entry. text_encoder_scale null = scale. "
    "ComfyUI, kohya and diffusers/PEFT key names are read for FLUX.2, FLUX.1 and Wan. Empty or [] = none."
)
_BLEND_FOLDER = "diffusion_models"


class DarkroomLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLoraStack",
            display_name="LoRA Stack (darkroom)",
            category="darkroom/loaders",
            description="Applies any number of LoRAs (JSON list) to a diffusion model and its text encoder.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRAs patch."),
                io.String.Input("loras", default="[]", multiline=True, tooltip=_LORAS_TIP),
                io.Combo.Input(
                    "expert",
                    options=[e.value for e in Expert],
                    default=Expert.BOTH.value,
                    tooltip="Which Wan 2.2 A14B expert this node's model is (one stack node per expert): "
                    "entries for the other expert are skipped. 'both' (one-model families) applies all.",
                ),
                io.Int.Input(
                    "max_loras",
                    default=DEFAULT_MAX_LORAS,
                    min=1,
                    max=MAX_LORAS_LIMIT,
                    tooltip="Most entries the loras list may hold; longer lists are rejected at queue time.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Optional text encoder; its LoRA layers use text_encoder_scale.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    tooltip="The model with the LoRAs patched in (a clone; the input is unchanged)."
                ),
                io.Clip.Output(
                    tooltip="The text encoder with its LoRA layers, or None when none was connected."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, loras: str | None = None, max_loras: int | None = None) -> bool | str:
        """Bad JSON, too many entries or a missing file fail at queue time (None: a linked input).

        Named inputs skip ComfyUI's own range checks, so max_loras is bounded here."""
        if loras is None:
            return True
        cap = DEFAULT_MAX_LORAS if max_loras is None else max_loras
        if not 1 <= cap <= MAX_LORAS_LIMIT:
            return f"max_loras must be 1 to {MAX_LORAS_LIMIT}, got {cap}"
        try:
            for spec in parse_lora_stack(loras, cap):
                resolve(spec.path)
        except (OverrideError, ModelFileError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model: Any, loras: str, expert: str, max_loras: int, clip: Any = None) -> io.NodeOutput:
        specs = parse_lora_stack(loras, max_loras)
        model, clip, _ = apply_stack(model, clip, specs, Expert(expert))
        return io.NodeOutput(model, clip)


class DarkroomLoraFile(io.ComfyNode):
    """One LoRA that is part of an endpoint's model (FLUX.2 [dev] Turbo's), bound like a model file; an
    empty name passes the model through, so one graph serves the endpoints with and without it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLoraFile",
            display_name="LoRA File (darkroom)",
            category="darkroom/loaders",
            description="Applies one LoRA file from models/loras to the diffusion model; empty: none.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA patches."),
                io.String.Input("lora_name", default="", tooltip="A file in models/loras; empty: none."),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-8.0,
                    max=8.0,
                    step=0.01,
                    tooltip="How strongly the LoRA applies.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The patched model (a clone), or the same one without a LoRA.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        if not lora_name:
            return True
        try:
            resolve(check_file_name(lora_name, "lora_name"))
        except (OverrideError, ModelFileError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model: Any, lora_name: str, strength: float) -> io.NodeOutput:
        if not lora_name:
            return io.NodeOutput(model)
        model, _, _ = apply_stack(model, None, [LoraSpec(path=lora_name, scale=strength)])
        return io.NodeOutput(model)


def _model_path(name: str) -> Path:
    path = folder_paths.get_full_path(_BLEND_FOLDER, name)
    if path is None:
        raise OverrideError(f"{name!r} is not in models/{_BLEND_FOLDER}; put the file there")
    return Path(path)


def _blend_inputs(models: str) -> list[BlendInput]:
    return [BlendInput(_model_path(spec.model), spec.weight) for spec in parse_blend(models)]


def _check_blend(models: str, family: Family, like: str) -> None:
    inputs = _blend_inputs(models)
    check_compatible(inputs, family)
    if like:
        reference = BlendInput(_model_path(check_file_name(like, "like")), 1.0)
        try:
            check_compatible([reference, *inputs], family)
        except BlendMismatchError as e:
            raise OverrideError(f"the blend must match {like}, the model it replaces: {e}") from e


class DarkroomModelBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomModelBlend",
            display_name="Blend Diffusion Models (darkroom)",
            category="darkroom/loaders",
            description="Weighted blend of diffusion models of one architecture, cached by files, weights.",
            inputs=[
                io.String.Input(
                    "models",
                    default="[]",
                    multiline=True,
                    tooltip='JSON list of files in models/diffusion_models and weights, e.g. [{"model": '
                    '"a.safetensors", "weight": 0.7}, {"model": "b.safetensors", "weight": 0.3}]. Weights '
                    "are >= 0 and normalised to sum 1; all files must share one architecture and size.",
                ),
                io.Combo.Input(
                    "family",
                    options=[f.value for f in Family],
                    default=Family.FLUX.value,
                    tooltip="flux: FLUX.2 / FLUX.1; wan: Wan 2.1 layout (incl. one A14B expert) or 2.2 5B; "
                    "sd3: SD3, SD 3.5 large or medium; qwen_image: Qwen-Image / Qwen-Image-Edit.",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=[w.value for w in WeightDtype],
                    default=WeightDtype.DEFAULT.value,
                    tooltip="How the blended weights are held, as in the loader nodes. The blend is computed "
                    "in float32 and stored as the first file's float dtype (bf16 for its fp8 layers).",
                ),
                io.String.Input(
                    "like",
                    default="",
                    optional=True,
                    tooltip="A file in models/diffusion_models the blend must match in architecture and "
                    "size, e.g. the model it replaces (a Wan I2V expert is not a T2V one). Empty = no check.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The blended diffusion model.")],
        )

    @classmethod
    def validate_inputs(
        cls, models: str | None = None, family: str | None = None, like: str | None = ""
    ) -> bool | str:
        """Bad JSON, missing files and incompatible models (header-only) fail at queue time."""
        if models is None or family is None or like is None:
            return True
        try:
            _check_blend(models, Family(family), like)
        except (OverrideError, ModelFileError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, models: str, family: str, weight_dtype: str, like: str = "") -> Any:
        """Re-run when a file changes on disk (the blend cache then rebuilds too)."""
        try:
            return cache_key(_blend_inputs(models), Family(family), WeightDtype(weight_dtype))
        except (OverrideError, OSError, ValueError):
            return None

    @classmethod
    def execute(cls, models: str, family: str, weight_dtype: str, like: str = "") -> io.NodeOutput:
        work_dir = Path(folder_paths.get_temp_directory()) / "darkroom-blend"
        model = blend_models(
            _blend_inputs(models), Family(family), weight_dtype=WeightDtype(weight_dtype), work_dir=work_dir
        )
        remember(model, "diffusion_model", *(spec.model for spec in parse_blend(models)))
        return io.NodeOutput(model)


class DarkroomVAEGuard(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomVAEGuard",
            display_name="VAE Guard (darkroom)",
            category="darkroom/sampling",
            description="Fails before sampling when the VAE's latent does not fit the model. Route the model "
            "through it to the sampler so it runs first; both pass through unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; wire the output on to the sampler."),
                io.Vae.Input("vae", tooltip="The VAE that will encode/decode this model's latents."),
            ],
            outputs=[
                io.Model.Output(tooltip="The same model (wire it to the guider/sampler)."),
                io.Vae.Output(tooltip="The same VAE (wire it to VAEDecode / the latent nodes)."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, vae: Any) -> io.NodeOutput:
        check_vae(model, vae)
        return io.NodeOutput(model, vae)


NODES: list[type[io.ComfyNode]] = [
    DarkroomLoraStack,
    DarkroomLoraFile,
    DarkroomModelBlend,
    DarkroomVAEGuard,
]
