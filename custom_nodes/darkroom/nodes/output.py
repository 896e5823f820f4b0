"""Output nodes: files the facade serves, described with what it needs (size, content type)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..formats.media import (
    CRF_MAX,
    FORMATS,
    VIDEO_CONTENT_TYPE,
    VIDEO_QUALITY_CRF,
    VIDEO_WRITE_MODE_PRESET,
    Audio,
    encode_image,
    encode_video,
    video_size,
)
from ..formats.safety import read_verdict

_PREFIX_TIP = "Prefix (may hold a subfolder)."
_SAFETY_TIP = (
    "A Safety Checker's verdicts: each saved file is described with its has_nsfw_concept (null when "
    "nothing was checked); a flagged video's sound track is saved silent (its frames are already black)."
)
_CRF_TIP = "x264 quality: lower is better and larger; 0 is lossless (many players refuse it)."
_AUDIO_TIP = (
    "A sound track (AAC in the mp4), cut or padded with silence to the frames' length; without it the "
    "mp4 has no audio stream."
)


class DarkroomSaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSaveImage",
            display_name="Darkroom Save Image",
            category="darkroom",
            description="Save images as png, jpeg or webp without embedded metadata, for the API to serve.",
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input("filename_prefix", default="darkroom", tooltip=_PREFIX_TIP),
                io.Combo.Input("format", options=list(FORMATS), default="png", tooltip="File format."),
                io.Int.Input(
                    "quality", default=95, min=1, max=100, tooltip="jpeg/webp quality; png ignores it."
                ),
                io.String.Input("safety", optional=True, force_input=True, tooltip=_SAFETY_TIP),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        images,
        filename_prefix: str,
        format: str,
        quality: int,
        safety: str | None = None,  # noqa: A002
    ) -> io.NodeOutput:
        height, width = int(images.shape[1]), int(images.shape[2])
        flags, note = read_verdict(safety, len(images)) if safety else ([None] * len(images), None)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height
        )
        extension = "jpg" if format == "jpeg" else format
        results = []
        for index, image in enumerate(images):
            file_name = f"{name}_{counter + index:05}_.{extension}"
            data = encode_image(image.cpu().float().numpy(), format, quality=quality)
            with open(os.path.join(folder, file_name), "wb") as f:
                f.write(data)
            results.append(
                {
                    "filename": file_name,
                    "subfolder": subfolder,
                    "type": "output",
                    "width": width,
                    "height": height,
                    "content_type": FORMATS[format],
                }
            )
            if safety:
                results[-1]["has_nsfw_concept"] = flags[index]
                if note:
                    results[-1]["safety_note"] = note
        return io.NodeOutput(ui={"images": results})


class DarkroomSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSaveVideo",
            display_name="Darkroom Save Video",
            category="darkroom",
            description=(
                "Save an image batch as one H.264 mp4 (yuv420p, no metadata), with an AAC sound track "
                "when given audio, for the API to serve."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The frames, in order (a decoded video latent)."),
                io.Float.Input(
                    "fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="Frames per second."
                ),
                io.String.Input("filename_prefix", default="darkroom", tooltip=_PREFIX_TIP),
                io.Int.Input("crf", default=19, min=0, max=CRF_MAX, optional=True, tooltip=_CRF_TIP),
                io.String.Input("safety", optional=True, force_input=True, tooltip=_SAFETY_TIP),
                io.Audio.Input("audio", optional=True, tooltip=_AUDIO_TIP),
                io.Combo.Input(
                    "video_quality",
                    options=list(VIDEO_QUALITY_CRF),
                    default="high",
                    optional=True,
                    tooltip="fal's video_quality, as x264's crf: "
                    + ", ".join(f"{k} {v}" for k, v in VIDEO_QUALITY_CRF.items())
                    + ". Given, it replaces crf.",
                ),
                io.Combo.Input(
                    "video_write_mode",
                    options=list(VIDEO_WRITE_MODE_PRESET),
                    default="balanced",
                    optional=True,
                    tooltip="fal's video_write_mode, as x264's preset (speed against size): "
                    + ", ".join(f"{k} {v}" for k, v in VIDEO_WRITE_MODE_PRESET.items())
                    + ".",
                ),
                io.Boolean.Input(
                    "reverse", default=False, optional=True, tooltip="Write the frames last to first."
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        images,
        fps: float,
        filename_prefix: str,
        crf: int = 19,
        safety: str | None = None,
        audio: dict | None = None,
        video_quality: str | None = None,
        video_write_mode: str = "balanced",
        reverse: bool = False,
    ) -> io.NodeOutput:
        # H.264 in yuv420p needs even sides: odd ones are padded by repeating the edge (see encode_video).
        height, width = video_size(int(images.shape[1]), int(images.shape[2]))
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height
        )
        file_name = f"{name}_{counter:05}_.mp4"
        flags, note = read_verdict(safety, 1) if safety else ([None], None)
        sound = Audio.from_comfy(audio) if audio is not None else None
        if sound is not None and flags[0]:  # the checker blackened the frames: the sound goes silent too
            sound = sound.silenced()
        frames = images.cpu().float().numpy()
        data = encode_video(
            frames[::-1] if reverse else frames,
            fps,
            crf=VIDEO_QUALITY_CRF[video_quality] if video_quality else crf,
            preset=VIDEO_WRITE_MODE_PRESET[video_write_mode],
            audio=sound,
        )
        with open(os.path.join(folder, file_name), "wb") as f:
            f.write(data)
        video = {
            "filename": file_name, "subfolder": subfolder, "type": "output", "width": width, "height": height,
            "frames": int(images.shape[0]), "fps": fps, "content_type": VIDEO_CONTENT_TYPE,
        }  # fmt: skip
        if safety:
            video["has_nsfw_concept"] = flags[0]
            if note:
                video["safety_note"] = note
        # ComfyUI's own shape for a saved video (as its SaveVideo): the editor plays it in the node.
        return io.NodeOutput(ui={"images": [video], "animated": (True,)})


NODES: list[type[io.ComfyNode]] = [DarkroomSaveImage, DarkroomSaveVideo]
