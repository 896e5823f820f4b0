"""What every family's inference shares: the families, the errors a model file can raise, the inferred
config, and reading a file's tensors (the prefix in front of them, block counts, a required shape)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Shape = tuple[int, ...]


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


def required_shape(shapes: Mapping[str, Shape], key: str, source: str) -> Shape:
    """The shape of tensor `key`; ArchInferenceError naming it when the file lacks it."""
    try:
        return shapes[key]
    except KeyError:
        raise ArchInferenceError(
            f"{source}: tensor {key!r} is missing; the file is incomplete, re-download it"
        ) from None
