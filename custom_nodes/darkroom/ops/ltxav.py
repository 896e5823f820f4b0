"""LTX-2's text encoder (Gemma-3 12B, then LTX-2's projection and its video and audio connectors) as a ComfyUI
CLIP, sized from its weights.

ComfyUI's LTXAVTextEncoderLoader builds it at the released widths only (comfy/text_encoders/lt.py: Gemma
3840 wide with 48 layers, a 3840 x 49 projection, 3840-wide connectors) and loads non-strictly, so a
file of another size runs with uninitialised weights. Here the sizes are read off the two files (the
Gemma file, and the LTX-2 checkpoint that holds the projection and connectors), ComfyUI's own classes are
built at them, and the keys are checked. The connectors' head count is not in their weights: 128-wide
heads as released where the width divides, else 32-wide (the tiny twin's). The same path loads the
released files and the tiny twins (darkroom.tiny.ltxav).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import comfy.sd
import comfy.text_encoders.llama
import comfy.text_encoders.lt
import comfy.utils
import torch
from comfy.ldm.lightricks.embeddings_connector import Embeddings1DConnector

from ..formats.arch import count_blocks
from ..formats.model_files import ModelFileMismatchError, StateDict, check_keys
from .encoders import _ClipTarget, llama_config, read_state_dict

GEMMA3_HEAD_DIM = 256  # a class attribute of Gemma3_12B_Config (not a field: it cannot be set)
CONNECTOR_HEAD_DIMS = (128, 32)
_PROJECTION = "text_embedding_projection.aggregate_embed.weight"  # in the checkpoint
_PROJECTION_AS = "text_embedding_projection.weight"  # in LTXAVTEModel
_CONNECTORS = ("video_embeddings_connector", "audio_embeddings_connector")
_CHECKPOINT_PREFIX = "model.diffusion_model."
# The Gemma file's vision tower and its projector: LTX-2 encodes text only, so a file without them (the
# tiny twin) loads; ComfyUI builds them at their released size either way.
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")


def gemma3_model(
    config: Mapping[str, Any], dtype: torch.dtype | None, device: Any, ops: Any
) -> torch.nn.Module:
    """ComfyUI's Gemma3_12B at these sizes (the tiny builder's model)."""
    return comfy.text_encoders.llama.Gemma3_12B(dict(config), dtype, device, ops)


def _connector_config(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    width = sd[prefix + "learnable_registers"].shape[1]
    head_dim = next((d for d in CONNECTOR_HEAD_DIMS if width % d == 0), width)
    return {
        "num_attention_heads": width // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": count_blocks(sd, prefix + "transformer_1d_blocks."),
        "num_learnable_registers": sd[prefix + "learnable_registers"].shape[0],
    }


def ltxav_sizes(gemma: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The Gemma config, projection and connector sizes of a pair of files."""
    projection = extra[_PROJECTION_AS].shape
    return {
        "gemma": llama_config(gemma, GEMMA3_HEAD_DIM),
        "projection": [projection[1], projection[0]],
        "connector": _connector_config(extra, f"{_CONNECTORS[0]}."),
    }


class SizedLTXAVTEModel(comfy.text_encoders.lt.LTXAVTEModel):
    """ComfyUI's LTXAVTEModel with every width from `model_options["ltxav_sizes"]` (see `ltxav_sizes`)."""

    def __init__(self, device: Any = "cpu", dtype: Any = None, model_options: Mapping[str, Any] = {}) -> None:  # noqa: B006
        torch.nn.Module.__init__(self)
        sizes = model_options["ltxav_sizes"]
        self.dtypes = {dtype}
        options = {**model_options, "model_name": "gemma3_12b", "gemma3_12b_model_config": sizes["gemma"]}
        self.gemma3_12b = comfy.text_encoders.lt.Gemma3_12BModel(
            device=device, dtype=dtype, model_options=options, layer="all", layer_idx=None
        )
        ops = self.gemma3_12b.operations
        in_features, out_features = sizes["projection"]
        self.text_embedding_projection = ops.Linear(
            in_features, out_features, bias=False, dtype=dtype, device=device
        )
        for name in _CONNECTORS:
            connector = Embeddings1DConnector(
                split_rope=True, double_precision_rope=True, dtype=dtype, device=device, operations=ops,
                **sizes["connector"],
            )  # fmt: skip
            setattr(self, name, connector)

    def load_sd(self, sd: StateDict) -> Any:
        if "model.embed_tokens.weight" in sd:  # the Gemma file (ComfyUI asks for layer 47)
            return self.gemma3_12b.load_sd(sd)
        return super().load_sd(sd)


def _extra(checkpoint: StateDict) -> StateDict:
    """The projection and connectors of an LTX-2 checkpoint, named as LTXAVTEModel names them."""
    out = {_PROJECTION_AS: checkpoint[_PROJECTION]} if _PROJECTION in checkpoint else {}
    for name in _CONNECTORS:
        prefix = f"{_CHECKPOINT_PREFIX}{name}."
        out |= {f"{name}.{k[len(prefix) :]}": v for k, v in checkpoint.items() if k.startswith(prefix)}
    return out


def load_ltxav_text_encoder(
    gemma_path: Path, checkpoint_path: Path, embedding_directory: Sequence[str] = ()
) -> comfy.sd.CLIP:
    """A ComfyUI CLIP for LTX-2 from its Gemma-3 file and its checkpoint, at the files' sizes."""
    gemma = read_state_dict(gemma_path)
    extra = _extra(comfy.utils.load_torch_file(str(checkpoint_path), safe_load=True))
    fix = "Pick LTX-2's Gemma-3 text encoder and an LTX-2 (19B) checkpoint."
    gemma_keys = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_norm.weight")
    extra_keys = (_PROJECTION_AS, f"{_CONNECTORS[0]}.learnable_registers")
    for path, sd, required, title in (
        (gemma_path, gemma, gemma_keys, "a Gemma-3 text encoder"),
        (checkpoint_path, extra, extra_keys, "an LTX-2 checkpoint"),
    ):
        missing = [key for key in required if key not in sd]
        if missing:
            raise ModelFileMismatchError(
                path, "keys LTX-2's text encoder needs are missing", expected=title, fix=fix, missing=missing
            )
    if "spiece_model" not in gemma:
        raise ModelFileMismatchError(
            gemma_path,
            "the file carries no `spiece_model` tokenizer",
            expected="a Gemma-3 text encoder with its tokenizer inside",
            fix=fix,
        )
    sizes = ltxav_sizes(gemma, extra)
    target = _ClipTarget(SizedLTXAVTEModel, comfy.text_encoders.lt.LTXAVGemmaTokenizer)
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=list(embedding_directory),
        tokenizer_data={"spiece_model": gemma["spiece_model"]},
        parameters=comfy.utils.calculate_parameters(gemma) + comfy.utils.calculate_parameters(extra),
        model_options={"ltxav_sizes": sizes},
    )
    model = clip.cond_stage_model
    weights = {k: v for k, v in gemma.items() if k != "spiece_model"}
    missing, unexpected = model.gemma3_12b.load_sd(weights)
    missing = [k for k in missing if not k.startswith(VISION_PREFIXES)]
    check_keys(gemma_path, missing, unexpected, expected="a Gemma-3 text encoder", fix=fix)
    missing, unexpected = model.load_state_dict(extra, strict=False)
    missing = [k for k in missing if not k.startswith("gemma3_12b.")]
    check_keys(checkpoint_path, missing, unexpected, expected="an LTX-2 checkpoint", fix=fix)
    return clip
