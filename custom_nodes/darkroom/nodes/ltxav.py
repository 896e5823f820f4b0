"""LTX-2 (LTXAV) nodes: its text encoder at the files' sizes, and its audio VAE without torchaudio (see
ops/ltxav.py and ops/ltxav_audio.py for why ComfyUI's own loaders do not serve here)."""

from __future__ import annotations

from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..ops.loaded import remember
from ..ops.ltxav import load_ltxav_text_encoder
from ..ops.ltxav_audio import LTXAVAudioVAE, load_audio_vae

_CKPT_TIP = "The LTX-2 checkpoint (from the checkpoints folder)."


def _checkpoint(name: str) -> Path:
    return Path(folder_paths.get_full_path_or_raise("checkpoints", name))


class DarkroomLTXAVTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLTXAVTextEncoderLoader",
            display_name="Load LTX-2 Text Encoder (darkroom)",
            category="darkroom/loaders",
            description="LTX-2's Gemma-3 text encoder with the checkpoint's projection and connectors, its "
            "sizes read off the weights (ComfyUI's loader builds the released sizes only).",
            inputs=[
                io.Combo.Input("text_encoder_name", options=folder_paths.get_filename_list("text_encoders")),
                io.Combo.Input(
                    "ckpt_name", options=folder_paths.get_filename_list("checkpoints"), tooltip=_CKPT_TIP
                ),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, text_encoder_name: str, ckpt_name: str) -> io.NodeOutput:
        gemma = Path(folder_paths.get_full_path_or_raise("text_encoders", text_encoder_name))
        clip = load_ltxav_text_encoder(
            gemma, _checkpoint(ckpt_name), folder_paths.get_folder_paths("embeddings")
        )
        remember(clip, "text_encoder", text_encoder_name)
        return io.NodeOutput(clip)


class DarkroomLTXAVAudioVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLTXAVAudioVAELoader",
            display_name="Load LTX-2 Audio VAE (darkroom)",
            category="darkroom/loaders",
            description="The audio VAE decoder and vocoder of an LTX-2 checkpoint (as LTXVAudioVAELoader, "
            "without torchaudio: decoding only).",
            inputs=[
                io.Combo.Input(
                    "ckpt_name", options=folder_paths.get_filename_list("checkpoints"), tooltip=_CKPT_TIP
                )
            ],
            outputs=[io.Vae.Output(display_name="Audio VAE")],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_audio_vae(_checkpoint(ckpt_name)))


class DarkroomLTXAVEmptyLatentAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLTXAVEmptyLatentAudio",
            display_name="LTX-2 Empty Latent Audio (darkroom)",
            category="darkroom/latent",
            description="An empty LTX-2 audio latent as long as `frames_number` video frames at `frame_rate` "
            "(as LTXVEmptyLatentAudio).",
            inputs=[
                io.Int.Input("frames_number", default=97, min=1, max=10000),
                io.Float.Input("frame_rate", default=25.0, min=1.0, max=1000.0),
                io.Vae.Input("audio_vae", display_name="Audio VAE"),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, frames_number: int, frame_rate: float, audio_vae: LTXAVAudioVAE) -> io.NodeOutput:
        shape = (
            1,
            audio_vae.latent_channels,
            audio_vae.latent_frames(frames_number, frame_rate),
            audio_vae.latent_frequency_bins,
        )
        samples = torch.zeros(shape, device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples, "sample_rate": audio_vae.sample_rate_hz, "type": "audio"})


class DarkroomLTXAVAudioVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLTXAVAudioVAEDecode",
            display_name="LTX-2 Audio VAE Decode (darkroom)",
            category="darkroom/latent",
            description="Decode an LTX-2 audio latent to sound (as LTXVAudioVAEDecode).",
            inputs=[io.Latent.Input("samples"), io.Vae.Input("audio_vae", display_name="Audio VAE")],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def execute(cls, samples: dict, audio_vae: LTXAVAudioVAE) -> io.NodeOutput:
        latent = samples["samples"]
        if latent.is_nested:
            latent = latent.unbind()[-1]
        waveform = audio_vae.decode(latent).to(comfy.model_management.intermediate_device(), torch.float32)
        return io.NodeOutput({"waveform": waveform, "sample_rate": audio_vae.output_sample_rate_hz})


NODES: list[type[io.ComfyNode]] = [
    DarkroomLTXAVTextEncoderLoader, DarkroomLTXAVAudioVAELoader, DarkroomLTXAVEmptyLatentAudio,
    DarkroomLTXAVAudioVAEDecode,
]  # fmt: skip
