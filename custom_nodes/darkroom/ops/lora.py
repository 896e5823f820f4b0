"""LoRA stacks on our diffusion models (and their text encoders) through ComfyUI's own patching.

Each LoRA is renamed into ComfyUI's format for the model at hand (lora_keys: ComfyUI, kohya, diffusers /
PEFT names for FLUX.2, FLUX.1 and Wan), turned into patches by comfy.lora.load_lora and attached to a clone
with ModelPatcher.add_patches, as comfy.sd.load_lora_for_models does: the loaded model never changes.
A LoRA that matches none of the model's layers is an error; a partial match is logged with its counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.lora
import comfy.lora_convert
import comfy.utils
import folder_paths
import torch

from ..formats.arch import ModelFileError, Shape
from ..formats.lora_keys import KeyTables, to_comfy
from ..formats.lora_names import guess_base, model_family
from ..formats.overrides import Expert, LoraSpec, OverrideError, check_file_name

log = logging.getLogger(__name__)

FOLDER = "loras"


class LoraFileError(ModelFileError):
    """A LoRA file that cannot be found or read."""

    code = "lora_file_invalid"


class LoraMismatchError(ModelFileError):
    """A LoRA none of whose layers exist in the model it is applied to."""

    code = "lora_mismatch"


@dataclass(frozen=True)
class LoraReport:
    """What one LoRA did: source keys matched / unmatched on the diffusion model, text-encoder layers."""

    name: str
    formats: tuple[str, ...]
    matched: int
    unmatched: int
    text_encoder_layers: int


def resolve(name: str) -> Path:
    """The file of a LoRA named inside the loras folder (subfolders such as cache/ allowed)."""
    try:
        check_file_name(name, "LoRA path")
    except OverrideError as e:
        raise LoraFileError(str(e)) from None
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise LoraFileError(
            f"{name!r} is not in models/{FOLDER}; put the file there (URLs are downloaded into "
            f"models/{FOLDER}/cache by the server) or fix the name"
        )
    return Path(path)


def load_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors (safetensors, or a pickle read weights-only)."""
    try:
        tensors: dict[str, torch.Tensor] = comfy.utils.load_torch_file(str(path), safe_load=True)
    except Exception as e:  # any reader error: the file is damaged or not a tensor file
        raise LoraFileError(f"{path}: not a readable LoRA file ({e}); re-download it") from e
    return tensors


def model_shapes(model: Any) -> dict[str, Shape]:
    """Un-prefixed state-dict shapes of a ModelPatcher's diffusion model (no copy is made)."""
    return {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}


def _no_match(source: str, shapes: dict[str, Shape], lora: dict[str, torch.Tensor], clip: Any) -> str:
    family = model_family(shapes)
    if not lora:
        return f"{source}: the file holds no tensors; re-download it"
    if all(k.startswith(("lora_te", "text_encoder")) for k in lora) and clip is None:
        return f"{source}: holds only text-encoder layers; connect the CLIP input to apply it"
    base = guess_base(lora)
    looks = f" Its layer names look like {base}" if base else " Its layer names are like"
    return (
        f"{source}: none of its {len(lora)} tensors match the {family} diffusion model (made for another "
        f"base model?{looks}, e.g. {sorted(lora)[0]!r}). Use a LoRA trained for {family}."
    )


def apply_lora(
    model: Any, clip: Any, lora: dict[str, torch.Tensor], *, scale: float, te_scale: float, source: str
) -> tuple[Any, Any, LoraReport]:
    """(model, clip) with one LoRA patched on clones; LoraMismatchError if nothing in it matches."""
    shapes = model_shapes(model)
    lora = comfy.lora_convert.convert_lora(lora)  # ComfyUI's own fix-ups (BFL control, Wan Fun, USO)
    conv = to_comfy(lora, KeyTables.build(shapes))
    te_patches: dict[Any, Any] = {}
    if clip is not None and conv.text_encoder:
        te_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
        te_patches = comfy.lora.load_lora(conv.text_encoder, te_map, log_missing=False)
    unet_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(conv.state_dict, unet_map, log_missing=False)
    if not patches and not te_patches:
        raise LoraMismatchError(_no_match(source, shapes, lora, clip))
    report = LoraReport(
        Path(source).name,
        tuple(sorted(conv.formats)),
        len(conv.matched),
        len(conv.unmatched),
        len(te_patches),
    )
    if conv.unmatched:
        log.warning(
            "LoRA %s: %d of %d keys match the %s model, %d do not (e.g. %s)%s",
            source, report.matched, report.matched + report.unmatched, model_family(shapes),
            report.unmatched, conv.unmatched[0], f"; {conv.problems[0]}" if conv.problems else "",
        )  # fmt: skip
    if patches and scale != 0:
        model = model.clone()
        model.add_patches(patches, scale)
    if te_patches and te_scale != 0:
        clip = clip.clone()
        clip.add_patches(te_patches, te_scale)
    return model, clip, report


def apply_stack(
    model: Any, clip: Any, specs: list[LoraSpec], expert: Expert = Expert.BOTH
) -> tuple[Any, Any, list[LoraReport]]:
    """Apply every spec serving `expert` in order; scale-0 entries are skipped without reading the file."""
    reports = []
    for spec in specs:
        path = resolve(spec.path)
        te_scale = spec.te_scale if clip is not None else 0.0
        if not spec.applies_to(expert) or (spec.scale == 0 and te_scale == 0):
            continue
        model, clip, report = apply_lora(
            model, clip, load_file(path), scale=spec.scale, te_scale=te_scale, source=str(path)
        )
        log.info(
            "LoRA %s (%s) scale %g / text encoder %g: %d keys matched, %d not, %d text-encoder layers",
            report.name, ", ".join(report.formats) or "-", spec.scale, te_scale, report.matched,
            report.unmatched, report.text_encoder_layers,
        )  # fmt: skip
        reports.append(report)
    return model, clip, reports
