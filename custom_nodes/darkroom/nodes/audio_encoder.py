"""The audio-encoder nodes Wan 2.2 S2V needs, without torchaudio (ComfyUI's own, AudioEncoderLoader and
AudioEncoderEncode, fail to import here: see ops/audio_encoder.py). Same types in and out, so their
AUDIO_ENCODER_OUTPUT feeds ComfyUI's WanSoundImageToVideo."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..ops.audio_encoder import S2V_FPS, Wav2Vec2Encoder, load_audio_encoder, retime_for_fps
from ..ops.loaded import remember

_FPS_TIP = (
    "The video's frame rate: WanSoundImageToVideo reads frame k's features at k / 16 s; at another rate "
    "they are re-timed so that each frame gets its own moment of the sound (16: as AudioEncoderEncode)."
)


class DarkroomAudioEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomAudioEncoderLoader",
            display_name="Load Audio Encoder (darkroom)",
            category="darkroom/loaders",
            description="A wav2vec2 audio encoder (as AudioEncoderLoader, without torchaudio), sizes read "
            "off the weights.",
            inputs=[
                io.Combo.Input("audio_encoder_name", options=folder_paths.get_filename_list("audio_encoders"))
            ],
            outputs=[io.AudioEncoder.Output()],
        )

    @classmethod
    def execute(cls, audio_encoder_name: str) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("audio_encoders", audio_encoder_name))
        encoder = load_audio_encoder(path)
        remember(encoder, "audio_encoder", audio_encoder_name)
        return io.NodeOutput(encoder)


class DarkroomAudioEncoderEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomAudioEncoderEncode",
            display_name="Audio Encoder Encode (darkroom)",
            category="darkroom/conditioning",
            description="Encode a sound (resampled to 16 kHz) with the audio encoder, as AudioEncoderEncode; "
            "its features re-timed for a video at `fps`.",
            inputs=[
                io.AudioEncoder.Input("audio_encoder"),
                io.Audio.Input("audio"),
                io.Float.Input(
                    "fps",
                    default=S2V_FPS,
                    min=1,
                    max=120,
                    optional=True,
                    tooltip=_FPS_TIP,
                ),
            ],
            outputs=[io.AudioEncoderOutput.Output()],
        )

    @classmethod
    def execute(cls, audio_encoder: Wav2Vec2Encoder, audio: dict, fps: float = S2V_FPS) -> io.NodeOutput:
        encoded = audio_encoder.encode_audio(audio["waveform"], audio["sample_rate"])
        return io.NodeOutput(retime_for_fps(encoded, fps))


NODES = [DarkroomAudioEncoderLoader, DarkroomAudioEncoderEncode]
