"""Which of our diffusion-model layers each diffusers name is (no ComfyUI), built from the model's own keys.

Names follow diffusers' conversion scripts (convert_flux2_to_diffusers.py, convert_wan_to_diffusers.py)
and lora_conversion_utils.py (_convert_non_diffusers_flux2_lora_to_diffusers); SD3's as ComfyUI's
comfy/utils.py (MMDIT_MAP_BLOCK, mmdit_to_diffusers) reads them. Diffusers splits some fused layers: FLUX
and SD3 q/k/v into to_q/to_k/to_v, FLUX.1 single-block linear1 into q/k/v + proj_mlp; those names patch a
band of rows of our fused weight. Its norm_out.linear holds (scale, shift) where BFL's
final_layer.adaLN_modulation.1 holds (shift, scale), as does SD3's last norm1_context.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .arch import Shape, count_blocks


@dataclass(frozen=True)
class Target:
    """What a LoRA layer name patches: our module (or parameter), optionally a band of its rows."""

    module: str
    rows: tuple[int, int] | None = None  # (first row, row count); None = the whole weight
    swap_halves: bool = False  # diffusers' (scale, shift) order against BFL's (shift, scale)


def model_family(shapes: Mapping[str, Shape]) -> str:
    """Human name of the diffusion model whose un-prefixed state-dict shapes these are."""
    if "double_stream_modulation_img.lin.weight" in shapes:
        return "FLUX.2"
    if "txt_norm.weight" in shapes and "transformer_blocks.0.img_mod.1.weight" in shapes:
        return "Qwen-Image"
    if "img_in.weight" in shapes:
        return "FLUX.1"
    if "cap_embedder.1.weight" in shapes:
        return "Z-Image"
    if "joint_blocks.0.context_block.attn.qkv.weight" in shapes:
        return "SD3"
    if "audio_patchify_proj.weight" in shapes:
        return "LTX-2"
    if "txt_in.individual_token_refiner.blocks.0.norm1.weight" in shapes:
        return "HunyuanVideo"
    return "Wan" if "head.modulation" in shapes else "an unrecognised model"


_LORA_HINTS = (
    ("audio_attn", "LTX-2"), ("audio_ff", "LTX-2"),
    ("to_qkv_mlp_proj", "FLUX.2"), ("double_stream_modulation", "FLUX.2"), ("self_attn", "Wan"),
    ("attn1", "Wan"), ("cross_attn", "Wan"), ("img_attn", "FLUX"), ("transformer_blocks", "FLUX"),
    ("input_blocks", "SD1/SDXL"), ("down_blocks", "SD1/SDXL"), ("joint_blocks", "SD3"),
)  # fmt: skip


def guess_base(keys: Iterable[str]) -> str | None:
    """The model family a LoRA's layer names suggest (a hint for error messages), or None."""
    joined = " ".join(k.replace("_", ".") for k in keys)
    return next((family for needle, family in _LORA_HINTS if needle.replace("_", ".") in joined), None)


def module_names(shapes: Mapping[str, Shape]) -> dict[str, Target]:
    """Our own names: each module with a `.weight`, and every other parameter by its full name."""
    out: dict[str, Target] = {}
    for key in shapes:
        module = key[: -len(".weight")] if key.endswith(".weight") else key
        out.setdefault(module, Target(module))
    return out


def _split(names: list[str], module: str, sizes: list[int]) -> dict[str, Target]:
    out, first = {}, 0
    for name, size in zip(names, sizes, strict=True):
        out[name] = Target(module, (first, size))
        first += size
    return out


_FLUX2_DOUBLE = {"img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
                 "img_mlp.0": "ff.linear_in", "img_mlp.2": "ff.linear_out",
                 "txt_mlp.0": "ff_context.linear_in", "txt_mlp.2": "ff_context.linear_out"}  # fmt: skip
_FLUX1_DOUBLE = {"img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
                 "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
                 "txt_mlp.2": "ff_context.net.2", "img_mod.lin": "norm1.linear",
                 "txt_mod.lin": "norm1_context.linear"}  # fmt: skip
_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}  # fmt: skip
_FLUX_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
             "time_in.in_layer": "{e}.timestep_embedder.linear_1",
             "time_in.out_layer": "{e}.timestep_embedder.linear_2",
             "guidance_in.in_layer": "{e}.guidance_embedder.linear_1",
             "guidance_in.out_layer": "{e}.guidance_embedder.linear_2",
             "vector_in.in_layer": "{e}.text_embedder.linear_1",
             "vector_in.out_layer": "{e}.text_embedder.linear_2",
             "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
             "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
             "single_stream_modulation.lin": "single_stream_modulation.linear"}  # fmt: skip
_WAN_BLOCK = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
              "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
              "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
              "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
              "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}  # fmt: skip
_WAN_TOP = {"patch_embedding": "patch_embedding", "head.head": "proj_out",
            "text_embedding.0": "condition_embedder.text_embedder.linear_1",
            "text_embedding.2": "condition_embedder.text_embedder.linear_2",
            "time_embedding.0": "condition_embedder.time_embedder.linear_1",
            "time_embedding.2": "condition_embedder.time_embedder.linear_2",
            "time_projection.1": "condition_embedder.time_proj",
            "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
            "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2"}  # fmt: skip


_SD3_BLOCK = {"x_block.attn.proj": "attn.to_out.0", "context_block.attn.proj": "attn.to_add_out",
              "x_block.attn2.proj": "attn2.to_out.0", "x_block.mlp.fc1": "ff.net.0.proj",
              "x_block.mlp.fc2": "ff.net.2", "context_block.mlp.fc1": "ff_context.net.0.proj",
              "context_block.mlp.fc2": "ff_context.net.2", "x_block.adaLN_modulation.1": "norm1.linear",
              "context_block.adaLN_modulation.1": "norm1_context.linear"}  # fmt: skip
_SD3_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
            "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}  # fmt: skip
_SD3_TOP = {"x_embedder.proj": "pos_embed.proj", "context_embedder": "context_embedder",
            "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
            "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
            "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
            "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
            "final_layer.linear": "proj_out"}  # fmt: skip


def _sd3_module(module: str, shapes: Mapping[str, Shape], last_block: int) -> dict[str, Target]:
    if hit := re.fullmatch(r"joint_blocks\.(\d+)\.(.+)", module):
        base, rest = f"transformer_blocks.{hit[1]}.", hit[2]
        if rest in _SD3_QKV:
            rows = shapes[f"{module}.weight"][0]
            return _split([base + n for n in _SD3_QKV[rest]], module, [rows // 3] * 3)
        name = _SD3_BLOCK.get(rest)
        # The last block's context side is only modulated (shift, scale): diffusers holds (scale, shift).
        swap = rest == "context_block.adaLN_modulation.1" and int(hit[1]) == last_block
        return {base + name: Target(module, swap_halves=swap)} if name else {}
    if module == "final_layer.adaLN_modulation.1":
        return {"norm_out.linear": Target(module, swap_halves=True)}
    name = _SD3_TOP.get(module)
    return {name: Target(module)} if name else {}


def _flux_module(module: str, shapes: Mapping[str, Shape], flux2: bool) -> dict[str, Target]:
    rows = shapes[f"{module}.weight"][0]
    if hit := re.fullmatch(r"double_blocks\.(\d+)\.(.+)", module):
        base, rest = f"transformer_blocks.{hit[1]}.", hit[2]
        if rest in _QKV:
            return _split([base + n for n in _QKV[rest]], module, [rows // 3] * 3)
        name = (_FLUX2_DOUBLE if flux2 else _FLUX1_DOUBLE).get(rest)
        return {base + name: Target(module)} if name else {}
    if hit := re.fullmatch(r"single_blocks\.(\d+)\.(.+)", module):
        base, rest = f"single_transformer_blocks.{hit[1]}.", hit[2]
        if flux2:
            name = {"linear1": "attn.to_qkv_mlp_proj", "linear2": "attn.to_out"}.get(rest)
            return {base + name: Target(module)} if name else {}
        if rest == "linear1":
            hidden = shapes["img_in.weight"][0]
            names = [base + n for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
            return _split(names, module, [hidden] * 3 + [rows - 3 * hidden])
        name = {"linear2": "proj_out", "modulation.lin": "norm.linear"}.get(rest)
        return {base + name: Target(module)} if name else {}
    if module == "final_layer.adaLN_modulation.1":
        return {"norm_out.linear": Target(module, swap_halves=True)}
    name = _FLUX_TOP.get(module)
    embed = "time_guidance_embed" if flux2 else "time_text_embed"
    return {name.format(e=embed): Target(module)} if name else {}


def _wan_module(module: str) -> dict[str, Target]:
    if hit := re.fullmatch(r"blocks\.(\d+)\.(.+)", module):
        name = _WAN_BLOCK.get(hit[2])
        return {f"blocks.{hit[1]}.{name}": Target(module)} if name else {}
    name = _WAN_TOP.get(module)
    return {name: Target(module)} if name else {}


# Z-Image, as diffusers' ZImageTransformer2DModel names it (ComfyUI's comfy/utils.py z_image_to_diffusers):
# the fused attention.qkv is to_q/to_k/to_v; the last layer and patch embedder carry a "2-1" patch key.
_ZIMAGE_BLOCK = {"attention.out": "attention.to_out.0", "attention.q_norm": "attention.norm_q",
                 "attention.k_norm": "attention.norm_k"}  # fmt: skip
_ZIMAGE_TOP = {"final_layer.linear": "all_final_layer.2-1.linear", "x_embedder": "all_x_embedder.2-1",
               "final_layer.adaLN_modulation.1": "all_final_layer.2-1.adaLN_modulation.1"}  # fmt: skip


def _zimage_module(module: str, shapes: Mapping[str, Shape]) -> dict[str, Target]:
    if hit := re.fullmatch(r"((?:layers|context_refiner|noise_refiner)\.\d+\.)(.+)", module):
        base, rest = hit[1], hit[2]
        if rest == "attention.qkv":
            rows = shapes[f"{module}.weight"][0]
            return _split([f"{base}attention.to_{n}" for n in "qkv"], module, [rows // 3] * 3)
        return {base + _ZIMAGE_BLOCK.get(rest, rest): Target(module)}
    return {_ZIMAGE_TOP.get(module, module): Target(module)}


def diffusers_names(shapes: Mapping[str, Shape]) -> dict[str, Target]:
    """Diffusers module name -> what it patches, for the model these un-prefixed shapes describe."""
    family = model_family(shapes)
    last_block = count_blocks(shapes, "joint_blocks.") - 1  # SD3's
    out: dict[str, Target] = {}
    for key in sorted(shapes):
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        if family.startswith("FLUX"):
            out |= _flux_module(module, shapes, family == "FLUX.2")
        elif family == "Wan":
            out |= _wan_module(module)
        elif family == "SD3":
            out |= _sd3_module(module, shapes, last_block)
        elif family == "Z-Image":
            out |= _zimage_module(module, shapes)
        elif family == "Qwen-Image":  # ComfyUI's Qwen-Image keeps diffusers' own names (comfy/lora.py)
            out[module] = Target(module)
    return out


def underscored(table: Mapping[str, Target]) -> dict[str, Target]:
    """kohya spelling (dots -> underscores); names that collide that way are dropped as ambiguous."""
    out: dict[str, Target] = {}
    seen: set[str] = set()
    for name, target in table.items():
        flat = name.replace(".", "_")
        if flat in seen:
            out.pop(flat, None)
        else:
            out[flat] = target
        seen.add(flat)
    return out
