"""Loader nodes for text encoders and VAEs whose sizes are read off the weights (see encoders.py, vae.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..formats.arch import ModelFileError
from ..ops.clip_vision import inspect_clip_vision, load_clip_vision
from ..ops.encoders import TextEncoderFamily, inspect_text_encoder, load_text_encoder
from ..ops.loaded import remember
from ..ops.vae import VAEFamily, inspect_vae, load_vae

NO_FILE = "none"
_OVERRIDE_EXAMPLE = '{"t5xxl": {"num_layers": 24}}'


def parse_config_override(text: str) -> dict[str, dict[str, Any]] | None:
    """The config_override input as a dict of model name -> config fields (None when blank)."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config_override is not valid JSON ({e}); expected e.g. {_OVERRIDE_EXAMPLE}") from e
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"config_override must map model names to objects, e.g. {_OVERRIDE_EXAMPLE}")
    return value


_FILES_NEEDED = {
    TextEncoderFamily.FLUX1.value: "two files, CLIP-L and T5-XXL (either order): set text_encoder_name_2 "
    f"and leave text_encoder_name_3 {NO_FILE}",
    TextEncoderFamily.SD3.value: "three files: CLIP-L, CLIP-G and T5-XXL as text_encoder_name, "
    "text_encoder_name_2 and text_encoder_name_3",
    TextEncoderFamily.HUNYUAN_VIDEO_15.value: "two files, Qwen2.5-VL then ByT5-small: set "
    f"text_encoder_name_2 and leave text_encoder_name_3 {NO_FILE}",
}


def _paths(name: str, family: str, second_name: str, third_name: str = NO_FILE) -> list[Path]:
    """The files to load: one, two for flux1, three for sd3; ValueError on a wrong count for the family."""
    names = [name, *(n for n in (second_name, third_name) if n != NO_FILE)]
    counts = {TextEncoderFamily.FLUX1: 2, TextEncoderFamily.SD3: 3, TextEncoderFamily.HUNYUAN_VIDEO_15: 2}
    wanted = {f.value: n for f, n in counts.items()}.get(family, 1)
    if len(names) != wanted or (wanted < 3 and third_name != NO_FILE):
        needed = _FILES_NEEDED.get(family, f"one text encoder file: set the other names to {NO_FILE}")
        raise ValueError(f"{family} takes {needed}")
    return [Path(folder_paths.get_full_path_or_raise("text_encoders", n)) for n in names]


class DarkroomTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list("text_encoders")
        return io.Schema(
            node_id="DarkroomTextEncoderLoader",
            display_name="Load Text Encoder (darkroom)",
            category="darkroom/loaders",
            description="Loads a FLUX.2, FLUX.1, Wan, Z-Image, SD3, Qwen-Image or HunyuanVideo 1.5 text "
            "encoder at any size, read off the weights.",
            inputs=[
                io.Combo.Input(
                    "text_encoder_name",
                    options=files,
                    tooltip="Text encoder file: Mistral-3 for flux2, CLIP-L or T5-XXL for flux1, "
                    "umt5-xxl for wan, Qwen3-4B for zimage, CLIP-L for sd3, Qwen2.5-VL (with its vision "
                    "tower) for qwen_image and hunyuan_video_15.",
                ),
                io.Combo.Input(
                    "family",
                    options=[f.value for f in TextEncoderFamily],
                    default=TextEncoderFamily.FLUX2.value,
                    tooltip="Model family the encoder is for; the file must match it.",
                ),
                io.Combo.Input(
                    "text_encoder_name_2",
                    options=[NO_FILE, *files],
                    default=NO_FILE,
                    optional=True,
                    tooltip="Second file: for flux1 (CLIP-L and T5-XXL, either order), sd3 (CLIP-G) and "
                    "hunyuan_video_15 (ByT5-small); none otherwise.",
                ),
                io.Combo.Input(
                    "text_encoder_name_3",
                    options=[NO_FILE, *files],
                    default=NO_FILE,
                    optional=True,
                    tooltip="Third file, for sd3 only (T5-XXL); none otherwise.",
                ),
                io.String.Input(
                    "config_override",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip=f"Optional JSON config fields per model, over those read off the weights: "
                    f"{_OVERRIDE_EXAMPLE}.",
                ),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def validate_inputs(
        cls,
        text_encoder_name: str | None = None,
        family: str | None = None,
        text_encoder_name_2: str | None = NO_FILE,
        config_override: str | None = "",
        text_encoder_name_3: str | None = NO_FILE,
    ) -> bool | str:
        """Header-only checks, so a wrong file or combination fails at queue time, not mid-run."""
        names = (text_encoder_name, family, text_encoder_name_2, text_encoder_name_3)
        if any(name is None for name in names):
            return True  # linked inputs: checked when the node runs
        try:
            inspect_text_encoder(
                _paths(text_encoder_name, family, text_encoder_name_2, text_encoder_name_3),
                family,
                config_override=parse_config_override(config_override or ""),
            )
        except (ModelFileError, ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls,
        text_encoder_name: str,
        family: str,
        text_encoder_name_2: str = NO_FILE,
        config_override: str = "",
        text_encoder_name_3: str = NO_FILE,
    ) -> io.NodeOutput:
        clip = load_text_encoder(
            _paths(text_encoder_name, family, text_encoder_name_2, text_encoder_name_3),
            family,
            config_override=parse_config_override(config_override),
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
        names = (text_encoder_name, text_encoder_name_2, text_encoder_name_3)
        remember(clip, "text_encoder", *(n for n in names if n != NO_FILE))
        return io.NodeOutput(clip)


class DarkroomVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomVAELoader",
            display_name="Load VAE (darkroom)",
            category="darkroom/loaders",
            description="Loads a FLUX.2, FLUX.1, Wan 2.1 / 2.2, SD3 or HunyuanVideo 1.5 VAE, its width read "
            "off the weights.",
            inputs=[
                io.Combo.Input(
                    "vae_name",
                    options=folder_paths.get_filename_list("vae"),
                    tooltip="VAE file from the vae folder.",
                ),
                io.Combo.Input(
                    "family",
                    options=[f.value for f in VAEFamily],
                    default=VAEFamily.FLUX2.value,
                    tooltip="Model family the VAE is for. Latents: flux2 128 ch at 1/16, flux1 16 ch at 1/8, "
                    "wan21 16 ch at 1/8 (also Qwen-Image's), wan22 48 ch at 1/16 (video: 4x in time), sd3 16 "
                    "ch at 1/8, hunyuan_video_15 32 ch at 1/16 (video: 4x in time).",
                ),
            ],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, vae_name: str | None = None, family: str | None = None) -> bool | str:
        """Header-only family check, so a wrong file fails at queue time."""
        if vae_name is None or family is None:
            return True
        try:
            inspect_vae(Path(folder_paths.get_full_path_or_raise("vae", vae_name)), family)
        except (ModelFileError, ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, vae_name: str, family: str) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("vae", vae_name))
        vae = load_vae(path, family)
        remember(vae, "vae", vae_name)
        return io.NodeOutput(vae)


class DarkroomCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomCLIPVisionLoader",
            display_name="Load CLIP Vision (darkroom)",
            category="darkroom/loaders",
            description="Loads a SigLIP vision tower (HunyuanVideo 1.5 image-to-video) at any size, read off "
            "the weights (ComfyUI's own loader knows only the released sizes).",
            inputs=[
                io.Combo.Input(
                    "clip_name",
                    options=folder_paths.get_filename_list("clip_vision"),
                    tooltip="SigLIP file from the clip_vision folder.",
                ),
            ],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def validate_inputs(cls, clip_name: str | None = None) -> bool | str:
        if clip_name is None:
            return True
        try:
            inspect_clip_vision(Path(folder_paths.get_full_path_or_raise("clip_vision", clip_name)))
        except (ModelFileError, ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        clip_vision = load_clip_vision(Path(folder_paths.get_full_path_or_raise("clip_vision", clip_name)))
        remember(clip_vision, "clip_vision", clip_name)
        return io.NodeOutput(clip_vision)


NODES: list[type[io.ComfyNode]] = [DarkroomTextEncoderLoader, DarkroomVAELoader, DarkroomCLIPVisionLoader]
