"""Text encoders for FLUX.2, FLUX.1, Wan, Z-Image, SD3, Qwen-Image and HunyuanVideo 1.5 as ComfyUI CLIP
objects, sized from their own weights.

ComfyUI's CLIPLoader recognises an encoder by hard-coded shapes (comfy/sd.py:1048-1093: Mistral-3 must
be 5120 wide, T5-XXL must have a block 23, Qwen3-4B 2560 wide), so a model at any other size does not
load through it.
Here the caller names the family, every size is read off the weights and handed to ComfyUI's own
classes through their `<name>_model_config` model options, and the keys are checked strictly
(ComfyUI loads text encoders non-strictly and runs with uninitialised weights when keys are missing).
The same path loads the full-size files and the tiny test twins. `inspect_text_encoder` runs the
same checks from the safetensors headers alone, for queue-time validation.

SD3's encoder (comfy/text_encoders/sd3_clip.py:129) pads the CLIP-L + CLIP-G tokens to 4096 features and
joins the T5 tokens after them, so it needs a T5 exactly 4096 wide (T5-XXL's d_model). A narrower T5
(the tiny twin's) has its tokens zero-padded to 4096 the same way the CLIP tokens are; at full size
nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import comfy.ops
import comfy.sd
import comfy.text_encoders.flux
import comfy.text_encoders.hunyuan_image
import comfy.text_encoders.hunyuan_video
import comfy.text_encoders.qwen_image
import comfy.text_encoders.qwen_vl
import comfy.text_encoders.sd3_clip
import comfy.text_encoders.wan
import comfy.text_encoders.z_image
import comfy.utils
import torch

from ..formats.arch import count_blocks
from ..formats.model_files import ModelFileMismatchError, StateDict, check_keys, parse_enum, read_shapes

log = logging.getLogger(__name__)

ConfigOverride = Mapping[str, Mapping[str, Any]]
Configs = dict[str, dict[str, Any]]

TOKENIZER_KEYS = frozenset({"tekken_model", "spiece_model"})
# A class attribute of comfy.text_encoders.llama.Mistral3Small24BConfig (and Qwen3_4BConfig), not a
# field: it cannot be set.
MISTRAL3_HEAD_DIM = 128
# Mistral3_24BModel(layer=[10, 20, 30]): FLUX.2 stacks these hidden states (flux.py:141, :157).
FLUX2_HIDDEN_STATES = (10, 20, 30)
CLIP_HEAD_DIM = 64
SD3_CONTEXT_WIDTH = 4096  # sd3_clip.py pads the CLIP tokens to this and joins T5's after them
# Qwen3_4BModel(layer_idx=-2): Z-Image reads the second-to-last hidden state; ComfyUI needs 3 layers.
ZIMAGE_MIN_LAYERS = 3
# HunyuanVideo 1.5 reads Qwen2.5-VL's third-to-last hidden state (hunyuan_image.py: layer_idx -3).
HUNYUAN15_MIN_LAYERS = 4


class TextEncoderFamily(StrEnum):
    FLUX2 = "flux2"
    FLUX1 = "flux1"
    WAN = "wan"
    ZIMAGE = "zimage"
    SD3 = "sd3"
    QWEN_IMAGE = "qwen_image"
    HUNYUAN_VIDEO_15 = "hunyuan_video_15"


def llama_config(sd: Mapping[str, torch.Tensor], head_dim: int) -> dict[str, Any]:
    """Llama-layout config fields (Mistral-3, Qwen3, Qwen2.5) read off a state dict, given the head width the
    model class fixes (output sizes only: safe for fp8)."""
    embed = sd["model.embed_tokens.weight"]
    return {
        "vocab_size": embed.shape[0],
        "hidden_size": embed.shape[1],
        "intermediate_size": sd["model.layers.0.mlp.gate_proj.weight"].shape[0],
        "num_hidden_layers": count_blocks(sd, "model.layers."),
        "num_attention_heads": sd["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        "num_key_value_heads": sd["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "final_norm": "model.norm.weight" in sd,
    }


def mistral3_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Mistral3Small24BConfig (or Qwen3_4BConfig) fields read off a Mistral-3 (Qwen3) state dict."""
    return llama_config(sd, MISTRAL3_HEAD_DIM)


# Class attributes of comfy.text_encoders.llama.Qwen25_7BVLI_Config (not fields: they cannot be set).
QWEN25_HEAD_DIM = 128
# Qwen25_7BVLI builds its vision tower 1280 wide with Qwen2VLVisionTransformer's other defaults
# (llama.py:647); a file at another size gets a tower built to its shapes. 1280 / 16 heads = 80.
QWEN25_VISION = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "num_layers": 32}
QWEN25_VISION_HEAD_DIM = 80


def qwen25_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Qwen25_7BVLI_Config fields read off a Qwen2.5-VL state dict (its language model)."""
    return llama_config(sd, QWEN25_HEAD_DIM)


def qwen25_vision_config(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Qwen2VLVisionTransformer's sizes read off the `visual.` tensors: 80-wide heads where the width
    allows (the released 1280 has 16), one head otherwise."""
    hidden = sd["visual.patch_embed.proj.weight"].shape[0]
    return {
        "hidden_size": hidden,
        "intermediate_size": sd["visual.blocks.0.mlp.gate_proj.weight"].shape[0],
        "num_heads": hidden // QWEN25_VISION_HEAD_DIM if hidden % QWEN25_VISION_HEAD_DIM == 0 else 1,
        "num_layers": count_blocks(sd, "visual.blocks."),
    }


def t5_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """T5 / umt5 config fields (comfy/text_encoders/t5_config_xxl.json) read off an encoder state dict."""
    shared = sd["shared.weight"]
    attn = "encoder.block.0.layer.0.SelfAttention."
    ff = "encoder.block.0.layer.1.DenseReluDense."
    heads = sd[attn + "relative_attention_bias.weight"].shape[1]
    gated = ff + "wi_0.weight" in sd
    return {
        "vocab_size": shared.shape[0],
        "d_model": shared.shape[1],
        "num_layers": count_blocks(sd, "encoder.block."),
        "num_heads": heads,
        "d_kv": sd[attn + "q.weight"].shape[0] // heads,
        "d_ff": sd[ff + ("wi_0.weight" if gated else "wi.weight")].shape[0],
        "is_gated_act": gated,
    }


def clip_text_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """CLIP text-model config fields (comfy/sd1_clip_config.json); heads assume CLIP's 64-wide heads."""
    hidden = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    return {
        "hidden_size": hidden,
        "intermediate_size": sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": count_blocks(sd, "text_model.encoder.layers."),
        "num_attention_heads": max(1, hidden // CLIP_HEAD_DIM),
        "max_position_embeddings": sd["text_model.embeddings.position_embedding.weight"].shape[0],
        "projection_dim": sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else hidden,
    }


@dataclass(frozen=True)
class EncoderKind:
    """One ComfyUI text-encoder model: `name` is its `<name>_model_config` option and attribute."""

    name: str
    title: str
    required: tuple[str, ...]
    infer: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    tolerated: frozenset[str] = frozenset()
    tokenizer: str | None = None  # the key its tokenizer is stored under inside the file
    # The model option its config override goes under, where not `<name>_model_config`: ComfyUI builds
    # HunyuanVideo 1.5's ByT5 without a model name (hunyuan_image.py), so it reads "_model_config".
    option: str | None = None

    @property
    def config_option(self) -> str:
        return self.option if self.option is not None else f"{self.name}_model_config"


_T5_REQUIRED = (
    "shared.weight",
    "encoder.block.0.layer.0.SelfAttention.q.weight",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
)
MISTRAL3 = EncoderKind(
    "mistral3_24b",
    "a Mistral-3 text encoder (FLUX.2)",
    (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ),
    mistral3_config,
    tokenizer="tekken_model",
)
_CLIP_REQUIRED = (
    "text_model.embeddings.token_embedding.weight",
    "text_model.encoder.layers.0.mlp.fc1.weight",
)
CLIP_L = EncoderKind(
    "clip_l",
    "a CLIP-L text encoder (FLUX.1, SD3)",
    _CLIP_REQUIRED,
    clip_text_config,
    # FLUX.1 and SD3 take its unprojected pooled output, so a file without the projection still works.
    frozenset({"text_projection.weight", "text_model.embeddings.position_ids", "logit_scale"}),
)
CLIP_G = EncoderKind(
    "clip_g",
    "a CLIP-G (OpenCLIP bigG) text encoder (SD3)",
    (*_CLIP_REQUIRED, "text_projection.weight"),  # SD3 takes its projected pooled output
    clip_text_config,
    frozenset({"text_model.embeddings.position_ids", "logit_scale"}),
)
T5XXL = EncoderKind("t5xxl", "a T5-XXL v1.1 encoder (FLUX.1, SD3)", _T5_REQUIRED, t5_config)
UMT5XXL = EncoderKind(
    "umt5xxl", "a umt5-xxl encoder (Wan)", _T5_REQUIRED, t5_config, tokenizer="spiece_model"
)
QWEN3_4B = EncoderKind(
    "qwen3_4b",
    "a Qwen3-4B text encoder (Z-Image)",
    (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ),
    mistral3_config,  # the same llama.py fields, read the same way (128-wide heads too)
)
QWEN25_7B = EncoderKind(
    "qwen25_7b",
    "a Qwen2.5-VL text encoder with its vision tower (Qwen-Image)",
    (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.0.mlp.gate_proj.weight",
        "visual.patch_embed.proj.weight",
        "visual.blocks.0.mlp.gate_proj.weight",
    ),
    qwen25_config,
    frozenset({"lm_head.weight"}),  # the full VL model's output head, which encoding never uses
)
BYT5_SMALL = EncoderKind(
    "byt5_small",
    "a ByT5-small glyph encoder (HunyuanVideo 1.5)",
    _T5_REQUIRED,
    t5_config,
    option="_model_config",
)
KINDS = {
    TextEncoderFamily.FLUX2: (MISTRAL3,),
    TextEncoderFamily.ZIMAGE: (QWEN3_4B,),
    TextEncoderFamily.FLUX1: (CLIP_L, T5XXL),
    TextEncoderFamily.WAN: (UMT5XXL,),
    TextEncoderFamily.SD3: (CLIP_L, CLIP_G, T5XXL),  # in this order
    TextEncoderFamily.QWEN_IMAGE: (QWEN25_7B,),
    TextEncoderFamily.HUNYUAN_VIDEO_15: (QWEN25_7B, BYT5_SMALL),  # in this order
}


@dataclass(frozen=True)
class _Part:
    kind: EncoderKind
    path: Path
    sd: StateDict


def describe(sd: Mapping[str, Any]) -> str:
    """A short guess at what a text-encoder state dict holds, for error messages."""
    if "model.layers.0.self_attn.q_proj.weight" in sd:
        return "an LLM-style encoder (Mistral/Llama/Qwen layout)"
    if "text_model.encoder.layers.0.mlp.fc1.weight" in sd:
        return "a CLIP text encoder"
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in sd:
        per_block_bias = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in sd
        return "a umt5 encoder (Wan)" if per_block_bias else "a T5 encoder"
    return f"no known text encoder ({len(sd)} keys, e.g. {', '.join(sorted(sd)[:3])})"


def _convert_clip_layouts(sd: StateDict) -> StateDict:
    if "transformer.resblocks.0.ln_1.weight" in sd:  # open_clip layout, as sd.py:1125 converts it
        return dict(comfy.utils.clip_text_transformers_convert(sd, "", ""))
    if "text_projection" in sd:  # saved by the CLIPSave node
        sd["text_projection.weight"] = sd.pop("text_projection").transpose(0, 1)
    return sd


def _parts(family: TextEncoderFamily, files: Sequence[tuple[Path, StateDict]]) -> list[_Part]:
    wanted = KINDS[family]
    if len(files) != len(wanted):
        titles = " and ".join(kind.title for kind in wanted)
        raise ValueError(f"family {family.value} needs {len(wanted)} file(s) ({titles}), got {len(files)}")
    files = [(path, _convert_clip_layouts(sd)) for path, sd in files]
    if family is TextEncoderFamily.FLUX1 and CLIP_L.required[-1] not in files[0][1]:
        files.reverse()  # CLIP-L and T5-XXL may come in either order
    parts = [_Part(kind, path, sd) for kind, (path, sd) in zip(wanted, files, strict=True)]
    for part in parts:
        _check_part(part, family)
    return parts


def _check_part(part: _Part, family: TextEncoderFamily) -> None:
    kind, sd = part.kind, part.sd
    missing = [key for key in kind.required if key not in sd]
    if missing:
        raise ModelFileMismatchError(
            part.path,
            f"this looks like {describe(sd)}",
            expected=kind.title,
            fix=f"Pick the family this file belongs to, or choose a {family.value} text encoder file.",
            missing=missing,
            unexpected=sorted(k for k in sd if k not in TOKENIZER_KEYS),
        )
    if kind.tokenizer and kind.tokenizer not in sd:
        raise ModelFileMismatchError(
            part.path,
            f"the file carries no `{kind.tokenizer}` tokenizer",
            expected=f"{kind.title} with its tokenizer stored inside as `{kind.tokenizer}`",
            fix="Use a file that embeds it, as ComfyUI's own releases of this encoder do.",
        )


def _configs(parts: Sequence[_Part], override: ConfigOverride | None) -> Configs:
    names = [part.kind.name for part in parts]
    unknown = sorted(set(override or {}) - set(names))
    if unknown:
        raise ValueError(
            f"config_override names {unknown}: expected an object keyed by {names}, "
            f'e.g. {{"{names[-1]}": {{"num_layers": 2}}}}'
        )
    configs = {
        part.kind.name: {**part.kind.infer(part.sd), **(override or {}).get(part.kind.name, {})}
        for part in parts
    }
    layers = configs.get(MISTRAL3.name, {}).get("num_hidden_layers", max(FLUX2_HIDDEN_STATES))
    if layers < max(FLUX2_HIDDEN_STATES):
        raise ModelFileMismatchError(
            parts[0].path,
            f"FLUX.2 stacks hidden states {FLUX2_HIDDEN_STATES} but the encoder has {layers} layers",
            expected=f"a Mistral-3 encoder with at least {max(FLUX2_HIDDEN_STATES)} layers",
            fix="Use the full or the FLUX.2-pruned (30-layer) Mistral-3 text encoder.",
        )
    layers = configs.get(QWEN3_4B.name, {}).get("num_hidden_layers", ZIMAGE_MIN_LAYERS)
    if layers < ZIMAGE_MIN_LAYERS:  # ComfyUI asserts it (sd1_clip.py:142) as a bare AssertionError
        raise ModelFileMismatchError(
            parts[0].path,
            f"Z-Image reads the second-to-last hidden state but the encoder has {layers} layers",
            expected=f"a Qwen3-4B encoder with at least {ZIMAGE_MIN_LAYERS} layers",
            fix="Use the Qwen3-4B text encoder Z-Image ships with (qwen_3_4b.safetensors, 36 layers).",
        )
    layers = configs.get(QWEN25_7B.name, {}).get("num_hidden_layers", HUNYUAN15_MIN_LAYERS)
    if BYT5_SMALL.name in configs and layers < HUNYUAN15_MIN_LAYERS:
        raise ModelFileMismatchError(
            parts[0].path,
            f"HunyuanVideo 1.5 reads the third-to-last hidden state but the encoder has {layers} layers",
            expected=f"a Qwen2.5-VL encoder with at least {HUNYUAN15_MIN_LAYERS} layers",
            fix="Use the Qwen2.5-VL 7B text encoder (qwen_2.5_vl_7b_fp8_scaled.safetensors, 28 layers).",
        )
    return configs


def inspect_text_encoder(
    paths: Sequence[Path], family: TextEncoderFamily | str, *, config_override: ConfigOverride | None = None
) -> Configs | None:
    """The configs `load_text_encoder` would build, from headers only (None: a file is not safetensors)."""
    family = parse_enum(TextEncoderFamily, family, "text encoder family")
    headers = [read_shapes(Path(path)) for path in paths]
    files = [(Path(path), sd) for path, sd in zip(paths, headers, strict=True) if sd is not None]
    if len(files) < len(headers):
        return None
    return _configs(_parts(family, files), config_override)


def read_state_dict(path: Path) -> StateDict:
    """Read a weights file as ComfyUI does, converting legacy scaled-fp8 layouts (sd.py:1016)."""
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    sd, _ = comfy.utils.convert_old_quants(sd, model_prefix="", metadata=metadata)
    return dict(sd)


@dataclass
class _ClipTarget:
    """What comfy.sd.CLIP expects as `target` (sd.py builds an ad-hoc EmptyClass for it)."""

    clip: Callable[..., torch.nn.Module]
    tokenizer: type
    params: dict[str, Any] = field(default_factory=dict)


def _target(
    family: TextEncoderFamily, parts: Sequence[_Part], configs: Configs
) -> tuple[_ClipTarget, dict[str, Any]]:
    """ComfyUI's model and tokenizer classes for the family, as sd.py:1152-1243 picks them."""
    if family is TextEncoderFamily.FLUX2:
        detected = comfy.text_encoders.hunyuan_video.llama_detect(parts[0].sd)
        clip, tokenizer = (
            comfy.text_encoders.flux.flux2_te(**detected),
            comfy.text_encoders.flux.Flux2Tokenizer,
        )
    elif family is TextEncoderFamily.FLUX1:
        detected = comfy.text_encoders.sd3_clip.t5_xxl_detect(parts[1].sd)
        clip, tokenizer = (
            comfy.text_encoders.flux.flux_clip(**detected),
            comfy.text_encoders.flux.FluxTokenizer,
        )
    elif family is TextEncoderFamily.ZIMAGE:
        detected = comfy.text_encoders.hunyuan_video.llama_detect(parts[0].sd)
        clip, tokenizer = (
            comfy.text_encoders.z_image.te(**detected),
            comfy.text_encoders.z_image.ZImageTokenizer,
        )
    elif family is TextEncoderFamily.SD3:
        detected = comfy.text_encoders.sd3_clip.t5_xxl_detect(parts[2].sd)
        clip, tokenizer = (
            comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True, **detected),
            comfy.text_encoders.sd3_clip.SD3Tokenizer,
        )
    elif family is TextEncoderFamily.HUNYUAN_VIDEO_15:
        detected = comfy.text_encoders.hunyuan_video.llama_detect(parts[0].sd)
        clip, tokenizer = (
            comfy.text_encoders.hunyuan_image.te(**detected),
            comfy.text_encoders.hunyuan_video.HunyuanVideo15Tokenizer,
        )
    elif family is TextEncoderFamily.QWEN_IMAGE:
        detected = comfy.text_encoders.hunyuan_video.llama_detect(parts[0].sd)
        clip, tokenizer = (
            comfy.text_encoders.qwen_image.te(**detected),
            comfy.text_encoders.qwen_image.QwenImageTokenizer,
        )
    else:
        detected = comfy.text_encoders.sd3_clip.t5_xxl_detect(parts[0].sd)
        clip, tokenizer = comfy.text_encoders.wan.te(**detected), comfy.text_encoders.wan.WanT5Tokenizer
    tokenizer_data = {
        part.kind.tokenizer: part.sd[part.kind.tokenizer] for part in parts if part.kind.tokenizer
    }
    if CLIP_L.name in configs:  # Long-CLIP files have more positions: pad to them, as long_clipl.py does
        tokenizer_data["clip_l_max_length"] = configs[CLIP_L.name]["max_position_embeddings"]
    return _ClipTarget(clip, tokenizer), tokenizer_data


def _pad_t5_to_sd3_width(clip: comfy.sd.CLIP, width: int) -> None:
    """A T5 narrower than SD3's 4096 gives tokens zero-padded to 4096, as sd3_clip.py pads the CLIP ones
    (only the tiny twin's is narrower; T5-XXL is 4096 wide and is left as it is)."""
    t5 = clip.cond_stage_model.t5xxl
    encode = t5.encode_token_weights

    def padded(token_weight_pairs: Any) -> Any:
        out, *rest = encode(token_weight_pairs)
        return (torch.nn.functional.pad(out, (0, SD3_CONTEXT_WIDTH - width)), *rest)

    t5.encode_token_weights = padded


def _fit_vision_tower(transformer: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Qwen2.5-VL: replace the vision tower ComfyUI built at the released size with one of the file's
    sizes (ComfyUI's own class), when they differ; its weights are loaded with the rest."""
    vision = qwen25_vision_config(sd)
    if vision == QWEN25_VISION:
        return
    old = transformer.visual
    param = old.patch_embed.proj.weight
    transformer.visual = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer(
        output_hidden_size=sd["model.embed_tokens.weight"].shape[1],
        device=param.device,
        dtype=param.dtype,
        ops=comfy.ops.manual_cast,
        **vision,
    )
    log.info("Qwen2.5-VL vision tower built at %s", vision)


def _load_part(model: torch.nn.Module, part: _Part, config: Mapping[str, Any]) -> None:
    module = getattr(model, part.kind.name)
    if part.kind is QWEN25_7B:
        _fit_vision_tower(module.transformer, part.sd)
    weights = {k: v for k, v in part.sd.items() if k not in TOKENIZER_KEYS}
    fix = "Check the family, or correct the sizes with config_override."
    try:
        missing, unexpected = module.load_sd(weights)
    except RuntimeError as e:  # size mismatch: the config does not fit these weights
        problem = f"weight shapes do not fit config {dict(config)}: {str(e).splitlines()[-1].strip()}"
        raise ModelFileMismatchError(part.path, problem, expected=part.kind.title, fix=fix) from e
    check_keys(
        part.path, missing, unexpected, expected=part.kind.title, fix=fix, tolerated=part.kind.tolerated
    )


def load_text_encoder(
    paths: Sequence[Path],
    family: TextEncoderFamily | str,
    *,
    config_override: ConfigOverride | None = None,
    embedding_directory: Sequence[str] | None = None,
) -> comfy.sd.CLIP:
    """A ComfyUI CLIP for `family` from one file (FLUX.2, Wan, Z-Image, Qwen-Image), two (FLUX.1: CLIP-L +
    T5-XXL, any order) or three (SD3: CLIP-L, CLIP-G, T5-XXL)."""
    family = parse_enum(TextEncoderFamily, family, "text encoder family")
    parts = _parts(family, [(Path(p), read_state_dict(Path(p))) for p in paths])
    configs = _configs(parts, config_override)
    target, tokenizer_data = _target(family, parts, configs)
    build = target.clip

    def build_and_load(**params: Any) -> torch.nn.Module:
        # The weights go in as the model is built, inside CLIP(): it measures the model next (its
        # load_models_gpu), and a quantised layer (ComfyUI's mixed-precision ops, as a scaled-fp8 file
        # such as umt5_xxl_fp8_e4m3fn_scaled makes) has no weight until its state dict is loaded.
        model = build(**params)
        for part in parts:
            _load_part(model, part, configs[part.kind.name])
        return model

    target.clip = build_and_load
    try:
        clip = comfy.sd.CLIP(
            target,
            embedding_directory=list(embedding_directory or []),
            tokenizer_data=tokenizer_data,
            parameters=sum(comfy.utils.calculate_parameters(part.sd) for part in parts),
            model_options={part.kind.config_option: configs[part.kind.name] for part in parts},
        )
    except TypeError as e:  # a config field the model class does not know (from config_override)
        raise ValueError(f"cannot build the {family.value} text encoder from {configs}: {e}") from e
    t5_width = configs.get(T5XXL.name, {}).get("d_model", SD3_CONTEXT_WIDTH)
    if family is TextEncoderFamily.SD3 and t5_width < SD3_CONTEXT_WIDTH:
        _pad_t5_to_sd3_width(clip, t5_width)
    log.info("text encoder %s from %s: %s", family.value, ", ".join(p.path.name for p in parts), configs)
    return clip
