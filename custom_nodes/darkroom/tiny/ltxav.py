"""Tiny LTX-2 (LTXAV) twins from ComfyUI's own classes: one checkpoint as Lightricks ships it (the audio-video
transformer, the video VAE, the audio VAE with its vocoder, and the text projection and connectors, under
their prefixes, with the sizes in the "config" metadata ComfyUI reads) and a Gemma-3 text encoder.

ComfyUI builds the transformer, both VAEs and the vocoder from that metadata (model_detection.py ~306,
sd.py ~474, audio_vae.py); only the text encoder's widths are pinned in code (3840 wide, 48 layers), so
`darkroom.ops.ltxav` loads it with sizes read off the weights. Fixed by the model, not by size: the audio
latent is 8 channels x 16 mel bins (so 64 mel bins), the video latent 128 channels at 8 x 32 x 32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import comfy.ldm.lightricks.av_model
import comfy.ldm.lightricks.vae.causal_audio_autoencoder
import comfy.ldm.lightricks.vae.causal_video_autoencoder
import comfy.ldm.lightricks.vocoders.vocoder
import comfy.ops
import safetensors.torch
import sentencepiece
import torch
from comfy.ldm.lightricks.embeddings_connector import Embeddings1DConnector

from ..formats.arch import Shape, is_linear_weight
from ..ops.ltxav import VISION_PREFIXES, gemma3_model
from .diffusion import lora_state_dict
from .encoders import GEMMA_SPECIALS, _blob, _fill, spiece_model

WIDTH = 64  # the tiny Gemma's width, and the connectors' (caption_channels)
GEMMA: dict[str, Any] = {
    "hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": 2, "num_attention_heads": 1,
    "num_key_value_heads": 1,
}  # fmt: skip
CONNECTOR: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "num_layers": 1,
    "num_learnable_registers": 8,
}
TRANSFORMER: dict[str, Any] = {
    "in_channels": 128, "audio_in_channels": 128, "cross_attention_dim": 64, "audio_cross_attention_dim": 32,
    "attention_head_dim": 32, "audio_attention_head_dim": 16, "num_attention_heads": 2,
    "audio_num_attention_heads": 2, "caption_channels": WIDTH, "num_layers": 1,
}  # fmt: skip
# ComfyUI tells an LTX VAE by its decoder's first res block (sd.py:464; the decoder runs its blocks last
# first), so the decoder ends with one.
VAE: dict[str, Any] = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
    "latent_channels": 128,
    "encoder_blocks": [["compress_all", {}]] * 3,
    "decoder_blocks": [*[["compress_all", {}]] * 3, ["res_x", {"num_layers": 1}]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False, "timestep_conditioning": False,
}  # fmt: skip
SAMPLE_RATE_HZ = 16000
HOP_LENGTH = 160
_AUDIO_ENCODER: dict[str, Any] = {
    "ch": 8, "out_ch": 8, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    "resamp_with_conv": True, "in_channels": 2, "resolution": 256, "z_channels": 8, "double_z": True,
    "attn_type": "vanilla", "mid_block_add_attention": False, "norm_type": "pixel",
    "causality_axis": "height", "mel_bins": 64,
}  # fmt: skip
AUDIO_VAE: dict[str, Any] = {
    "_class_name": "CausalAudioAutoencoder",
    "sampling_rate": SAMPLE_RATE_HZ,
    "model": {
        "params": {
            "encoder": _AUDIO_ENCODER,
            "decoder": {**_AUDIO_ENCODER, "out_ch": 2, "give_pre_end": False, "tanh_out": False},
            "preprocessing": {"stft": {"hop_length": HOP_LENGTH, "filter_length": 1024}},
        }
    },
}
VOCODER: dict[str, Any] = {
    "resblock_kernel_sizes": [3], "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [10, 8, 4, 4, 4], "resblock_dilation_sizes": [[1, 3, 5]],
    "upsample_initial_channel": 32, "stereo": True, "resblock": "1",
    "output_sample_rate": SAMPLE_RATE_HZ,
}  # fmt: skip
_OPS = comfy.ops.disable_weight_init


def _prefixed(
    prefix: str, module: torch.nn.Module, salt: str, skip: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """bf16 values for the module's tensors (but those under `skip`), their keys under `prefix`."""
    tensors = {k: t for k, t in module.state_dict().items() if not k.startswith(skip)}
    return {prefix + k: _fill(k, t, salt).to(torch.bfloat16).contiguous() for k, t in tensors.items()}


def connector() -> torch.nn.Module:
    return Embeddings1DConnector(split_rope=True, double_precision_rope=True, operations=_OPS, **CONNECTOR)


def checkpoint(salt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tiny LTX-2 checkpoint's tensors and metadata (one twin for the dev and the distilled model: both
    are random weights of one layout; the endpoints differ in their schedules)."""
    model = comfy.ldm.lightricks.av_model.LTXAVModel(operations=_OPS, **TRANSFORMER)
    vae = comfy.ldm.lightricks.vae.causal_video_autoencoder.VideoVAE(config=VAE)
    audio = comfy.ldm.lightricks.vae.causal_audio_autoencoder.CausalAudioAutoencoder(config=AUDIO_VAE)
    vocoder = comfy.ldm.lightricks.vocoders.vocoder.Vocoder(config=VOCODER)
    projection = torch.nn.Linear(WIDTH * (GEMMA["num_hidden_layers"] + 1), WIDTH, bias=False)
    sd = {
        **_prefixed("model.diffusion_model.", model, salt),
        **_prefixed("vae.", vae, salt + "/vae"),
        **_prefixed("audio_vae.", audio, salt + "/audio_vae"),
        **_prefixed("vocoder.", vocoder, salt + "/vocoder"),
        **_prefixed("model.diffusion_model.video_embeddings_connector.", connector(), salt + "/vc"),
        **_prefixed("model.diffusion_model.audio_embeddings_connector.", connector(), salt + "/ac"),
        **_prefixed("text_embedding_projection.aggregate_embed.", projection, salt + "/proj"),
    }
    config = {"transformer": TRANSFORMER, "vae": VAE, "audio_vae": AUDIO_VAE, "vocoder": VOCODER}
    return sd, {"config": json.dumps(config, sort_keys=True)}


def gemma3() -> dict[str, torch.Tensor]:
    """Tiny Gemma-3 text encoder (LTX-2): 2 layers of width 64, its sentencepiece model inside."""
    spiece = spiece_model(GEMMA_SPECIALS)
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    # on the meta device: ComfyUI builds the 400M-parameter vision tower whatever the sizes (shapes suffice)
    model = gemma3_model({**GEMMA, "vocab_size": vocab}, torch.float32, "meta", _OPS)
    # LTX-2 encodes text only: the tiny file leaves out the vision tower and its projector (ComfyUI builds
    # them at their released size whatever the file holds; darkroom.ops.ltxav tolerates their absence).
    return {**_prefixed("", model, "gemma3", skip=VISION_PREFIXES), "spiece_model": _blob(spiece)}


def _in_block(key: str, shape: Shape) -> bool:
    return is_linear_weight(key, shape) and key.startswith("transformer_blocks.")


def lora() -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on the tiny transformer's block linears (video, audio and cross-modal attention and
    feed-forwards), keyed as LTX-2's trainer writes LoRAs for ComfyUI:
    `diffusion_model.<module>.lora_A.weight` and `.lora_B.weight`, no alpha (scale 1, as
    lora_state_dict's alpha = rank)."""
    model = comfy.ldm.lightricks.av_model.LTXAVModel(operations=_OPS, device="meta", **TRANSFORMER)
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    comfy_named = lora_state_dict(shapes, _in_block, "ltx2-19b-lora-a")
    peft = {".lora_up.weight": ".lora_B.weight", ".lora_down.weight": ".lora_A.weight"}
    return {
        key.replace(old, new): tensor
        for key, tensor in comfy_named.items()
        for old, new in peft.items()
        if key.endswith(old)
    }


FILES: dict[str, Callable[[], tuple[dict[str, torch.Tensor], dict[str, str] | None]]] = {
    "checkpoints/tiny/ltx2-19b.safetensors": lambda: checkpoint("ltx2"),
    "text_encoders/tiny/gemma3-12b.safetensors": lambda: (gemma3(), None),
    "loras/tiny/ltx2-19b-lora-a.safetensors": lambda: (lora(), None),
}


def build(models_dir: Path) -> list[Path]:
    """Write the tiny LTX-2 files under `models_dir` (same bytes on every run)."""
    written = []
    for relative, make in FILES.items():
        path = models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        sd, metadata = make()
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
        written.append(path)
    return written
