"""The wav2vec2 audio encoder (Wan 2.2 S2V's), from ComfyUI's own class, without torchaudio.

ComfyUI's AudioEncoderLoader/AudioEncoderEncode (comfy_extras/nodes_audio_encoder.py) import
comfy/audio_encoders/audio_encoders.py, which imports torchaudio (to resample to 16 kHz, and whisper.py for
its mel spectrogram); torchaudio has no build for the torch darkroom pins, so ComfyUI skips those nodes.
comfy/audio_encoders/wav2vec2.py itself needs none of it: this module builds its Wav2Vec2Model with the
sizes read off the weights (ComfyUI's loader knows the released base and large only), resamples with the
same windowed-sinc kernel as torchaudio.functional.resample's defaults, in plain torch, and encodes as
AudioEncoderModel.encode_audio does (audio_encoders.py ~37-45): the same AUDIO_ENCODER_OUTPUT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import torch
from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model

from ..formats.model_files import ModelFileMismatchError, check_keys

SAMPLE_RATE_HZ = 16000  # wav2vec2's input rate
S2V_FPS = 16  # comfy_extras/nodes_wan.py wan_sound_to_video lays the features out for 16 fps video
_HEAD_DIM = 64  # wav2vec2 base (768 / 12) and large (1024 / 16)
_FIX = "Pick a wav2vec2 audio encoder (Wan S2V's is wav2vec2_large_english)."


def resample(waveform: torch.Tensor, from_hz: int, to_hz: int) -> torch.Tensor:
    """torchaudio.functional.resample's default (sinc_interp_hann, 6 zero crossings, rolloff 0.99) over
    the last axis, in plain torch."""
    if from_hz == to_hz:
        return waveform
    gcd = math.gcd(int(from_hz), int(to_hz))
    orig, new = int(from_hz) // gcd, int(to_hz) // gcd
    zeros, base = 6, min(orig, new) * 0.99
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1]).to(torch.float64)
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = (
        torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
        .transpose(1, 2)
        .reshape(flat.shape[0], -1)
    )
    out = out[:, : math.ceil(new * shape[-1] / orig)]
    return out.reshape(*shape[:-1], out.shape[-1]).to(waveform.dtype)


def wav2vec2_config(shapes: Mapping[str, tuple[int, ...]], path: Path) -> dict[str, Any]:
    """Wav2Vec2Model's arguments from the weights' shapes. The released files tie conv_norm,
    do_normalize and do_stable_layer_norm together (large: all on; base: all off), as ComfyUI's loader."""
    if "encoder.layer_norm.bias" not in shapes:
        raise ModelFileMismatchError(
            path, "it has no encoder.layer_norm", expected="a wav2vec2 model", fix=_FIX
        )
    dim = shapes["encoder.layer_norm.bias"][0]
    layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layers."))
    large = "feature_extractor.conv_layers.1.layer_norm.weight" in shapes
    return {
        "embed_dim": dim, "num_heads": max(1, dim // _HEAD_DIM), "num_layers": layers, "conv_norm": large,
        "conv_bias": "feature_extractor.conv_layers.1.conv.bias" in shapes, "do_normalize": large,
        "do_stable_layer_norm": large,
    }  # fmt: skip


class Wav2Vec2Encoder:
    """AudioEncoderModel's interface (ComfyUI's AUDIO_ENCODER) around Wav2Vec2Model."""

    def __init__(self, sd: Mapping[str, torch.Tensor], path: Path) -> None:
        self.load_device = comfy.model_management.text_encoder_device()
        offload_device = comfy.model_management.text_encoder_offload_device()
        self.dtype = comfy.model_management.text_encoder_dtype(self.load_device)
        self.config = wav2vec2_config({k: tuple(v.shape) for k, v in sd.items()}, path)
        self.model = Wav2Vec2Model(
            **self.config, dtype=self.dtype, device=offload_device, operations=comfy.ops.manual_cast
        )
        self.model.eval()
        missing, unexpected = self.model.load_state_dict(dict(sd), strict=False)
        check_keys(path, missing, unexpected, expected="a wav2vec2 model", fix=_FIX)
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.model, load_device=self.load_device, offload_device=offload_device
        )
        self.model_sample_rate = SAMPLE_RATE_HZ

    def encode_audio(self, audio: torch.Tensor, sample_rate: int) -> dict[str, Any]:
        comfy.model_management.load_model_gpu(self.patcher)
        audio = resample(audio, sample_rate, SAMPLE_RATE_HZ)
        with torch.no_grad():  # ComfyUI's executor runs nodes without autograd too
            out, all_layers = self.model(audio.to(self.load_device))
        return {"encoded_audio": out, "encoded_audio_all_layers": all_layers, "audio_samples": audio.shape[2]}


def retime_for_fps(encoded: dict[str, Any], fps: float) -> dict[str, Any]:
    """The features re-timed so that WanSoundImageToVideo, which reads frame k's at k / 16 s, gets those of
    k / fps s: each layer's time axis scaled by fps / 16 (linear, as that node's own 50 -> 30 per second)."""
    if fps == S2V_FPS:
        return encoded

    def scaled(x: torch.Tensor) -> torch.Tensor:
        length = max(1, round(x.shape[1] * fps / S2V_FPS))
        return torch.nn.functional.interpolate(
            x.transpose(1, 2), size=length, mode="linear", align_corners=True
        ).transpose(1, 2)

    return {
        **encoded,
        "encoded_audio": scaled(encoded["encoded_audio"]),
        "encoded_audio_all_layers": tuple(scaled(x) for x in encoded["encoded_audio_all_layers"]),
    }


def load_audio_encoder(path: Path) -> Wav2Vec2Encoder:
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    return Wav2Vec2Encoder(comfy.utils.state_dict_prefix_replace(sd, {"wav2vec2.": ""}), path)
