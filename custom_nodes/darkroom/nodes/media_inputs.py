"""Load the video and audio inputs a request brought (``video_url``, ``audio_url``): the facade fetched,
probed and bounded each file, then put it in the worker's input folder; these decode it for the graph."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..formats.media_inputs import decode_audio, decode_video

_NAME_TIP = "The file's name in ComfyUI's input folder (the facade puts a request's file there)."


def _input_path(name: str) -> Path:
    """``name`` in the input folder; a name reaching outside it is refused."""
    root = Path(folder_paths.get_input_directory()).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ValueError(f"{name!r} is not a file in ComfyUI's input folder")
    return path


class DarkroomLoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLoadVideo",
            display_name="Darkroom Load Video",
            category="darkroom/inputs",
            description="Decode an input video into frames (IMAGE), with its frame rate and frame count.",
            inputs=[
                io.String.Input("video", default="", tooltip=_NAME_TIP),
                io.Int.Input(
                    "frames",
                    default=0,
                    min=0,
                    max=100_000,
                    tooltip="0: every frame; else exactly this many, the first ones, the last repeated when "
                    "the video is shorter.",
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=1.0,
                    max=120.0,
                    optional=True,
                    tooltip="The rate to resample to (with resample on).",
                ),
                io.Boolean.Input(
                    "resample",
                    default=False,
                    optional=True,
                    tooltip="Resample the video to fps first (each frame is the one showing at its time); "
                    "off, its own frames are taken one by one.",
                ),
            ],
            outputs=[io.Image.Output("images"), io.Float.Output("fps"), io.Int.Output("frame_count")],
        )

    @classmethod
    def execute(cls, video: str, frames: int, fps: float = 16.0, resample: bool = False) -> io.NodeOutput:
        pixels, fps = decode_video(_input_path(video), frames, fps if resample else 0.0)
        return io.NodeOutput(torch.from_numpy(pixels), fps, int(pixels.shape[0]))


class DarkroomLoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomLoadAudio",
            display_name="Darkroom Load Audio",
            category="darkroom/inputs",
            description="Decode an input audio file (or a video's sound) into AUDIO at its own sample rate.",
            inputs=[io.String.Input("audio", default="", tooltip=_NAME_TIP)],
            outputs=[io.Audio.Output("audio"), io.Float.Output("duration_s")],
        )

    @classmethod
    def execute(cls, audio: str) -> io.NodeOutput:
        samples, rate = decode_audio(_input_path(audio))
        waveform = torch.from_numpy(samples)[None]  # [1, channels, samples], as ComfyUI's LoadAudio
        return io.NodeOutput({"waveform": waveform, "sample_rate": rate}, samples.shape[1] / rate)


NODES = [DarkroomLoadVideo, DarkroomLoadAudio]
