"""LTX-2's audio VAE decoder and vocoder, from ComfyUI's own classes, without torchaudio.

ComfyUI's audio nodes for LTX-2 (comfy_extras/nodes_lt_audio.py) import comfy/ldm/lightricks/vae/audio_vae.py,
which imports torchaudio at the top; torchaudio has no build for the torch darkroom pins (2.14), so ComfyUI
skips those nodes. Generating sound needs none of torchaudio (it computes the mel spectrogram of an input
sound, for encoding): this module builds the same parts (CausalAudioAutoencoder, Vocoder, AudioPatchifier)
from the checkpoint's "config" metadata and decodes as AudioVAE.decode does (audio_vae.py ~198-240).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy.ldm.lightricks.symmetric_patchifier import AudioPatchifier
from comfy.ldm.lightricks.vae.causal_audio_autoencoder import CausalAudioAutoencoder, CausalityAxis
from comfy.ldm.lightricks.vocoders.vocoder import Vocoder

from ..formats.model_files import ModelFileMismatchError, check_keys

LATENT_DOWNSAMPLE = 4  # audio_vae.py's LATENT_DOWNSAMPLE_FACTOR: 4 mel frames per latent, 4 mel bins per bin


class LTXAVAudioVAE(torch.nn.Module):
    """The audio half of an LTX-2 checkpoint: latent sizes for an empty latent, and decoding to a waveform."""

    def __init__(self, sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], path: Path) -> None:
        super().__init__()
        self.autoencoder = CausalAudioAutoencoder(config=dict(config["audio_vae"]))
        self.vocoder = Vocoder(config=dict(config["vocoder"]))
        for name, module in (("audio_vae", self.autoencoder), ("vocoder", self.vocoder)):
            weights = comfy.utils.state_dict_prefix_replace(dict(sd), {f"{name}.": ""}, filter_keys=True)
            missing, unexpected = module.load_state_dict(weights, strict=False)
            if name == "audio_vae":  # decoding only: the encoder may be absent
                missing = [k for k in missing if not k.startswith("encoder.")]
            check_keys(path, missing, unexpected, expected=f"an LTX-2 checkpoint's {name}", fix=_FIX)
        self.patchifier = AudioPatchifier(
            patch_size=1,
            audio_latent_downsample_factor=LATENT_DOWNSAMPLE,
            sample_rate=self.autoencoder.sampling_rate,
            hop_length=self.autoencoder.mel_hop_length,
            is_causal=self.autoencoder.is_causal,
        )
        self.patcher = comfy.model_patcher.ModelPatcher(
            self, comfy.model_management.get_torch_device(), comfy.model_management.vae_offload_device()
        )

    @property
    def latent_channels(self) -> int:
        return int(self.autoencoder.decoder.z_channels)

    @property
    def latent_frequency_bins(self) -> int:
        return int(self.autoencoder.mel_bins // LATENT_DOWNSAMPLE)

    @property
    def sample_rate_hz(self) -> int:
        return int(self.autoencoder.sampling_rate)

    @property
    def output_sample_rate_hz(self) -> int:
        rate = getattr(self.vocoder, "output_sample_rate", None)
        if rate is not None:
            return int(rate)
        return int(self.sample_rate_hz * self.vocoder.upsample_factor / self.autoencoder.mel_hop_length)

    def latent_frames(self, frames: int, fps: float) -> int:
        """Audio latents covering `frames` video frames at `fps`, as LTXVEmptyLatentAudio counts them."""
        per_second = self.sample_rate_hz / self.autoencoder.mel_hop_length / LATENT_DOWNSAMPLE
        return math.ceil(frames / fps * per_second)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, channels, time, freq) latents to a (batch, audio channels, samples) waveform."""
        comfy.model_management.free_memory(self.patcher.model_size(), self.patcher.load_device)
        comfy.model_management.load_model_gpu(self.patcher)
        latents = latents.to(self.patcher.load_device, torch.float32)
        channels, freq = latents.shape[1], latents.shape[3]
        patched, _ = self.patchifier.patchify(latents)
        stats = self.autoencoder.per_channel_statistics
        latents = self.patchifier.unpatchify(stats.un_normalize(patched), channels=channels, freq=freq)
        length = latents.shape[2] * LATENT_DOWNSAMPLE
        if self.autoencoder.causality_axis != CausalityAxis.NONE:
            length -= LATENT_DOWNSAMPLE - 1
        decoder = self.autoencoder.decoder
        shape = (latents.shape[0], decoder.out_ch, length, self.autoencoder.mel_bins)
        mel = self.autoencoder.decode(latents, target_shape=shape).transpose(2, 3)
        if decoder.out_ch == 1:
            mel = mel.squeeze(1)
        elif decoder.out_ch != 2:
            raise ValueError(f"the audio VAE decodes {decoder.out_ch} channels; LTX-2's vocoder takes 1 or 2")
        return self.vocoder(mel)


_FIX = "Pick an LTX-2 checkpoint (it holds the audio VAE and vocoder with their config)."


def load_audio_vae(path: Path) -> LTXAVAudioVAE:
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get("config", "{}"))
    if "audio_vae" not in config or "vocoder" not in config:
        raise ModelFileMismatchError(
            path, "its metadata has no audio_vae and vocoder config", expected="an LTX-2 checkpoint", fix=_FIX
        )
    return LTXAVAudioVAE(sd, config, path)
